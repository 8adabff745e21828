from groundthink.cli.main import main

raise SystemExit(main())
