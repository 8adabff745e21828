"""GroundThink: small hybrid language models with RWKV-6 and Mamba-2 in parallel in every block."""
import time

__version__ = "0.1.0"
# When the package was first imported: a command's phase clock charges the time before its run started
# (imports of torch and FLA, argument parsing) to "startup".
IMPORTED_AT = time.perf_counter()
