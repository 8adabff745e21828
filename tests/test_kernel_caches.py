"""The on-disk kernel caches on CPU: records (Hopper verdicts, warm starts), FLA's autotune entries in
Triton's cache, the child-process check and how its failures are named.

There is no GPU here, so the GPU's identity is simulated where a key needs one; the child processes are real.
"""
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from groundthink.ops import backend, fla_hopper, kernel_cache
from groundthink.ops.child_check import STARTED_MARK, ChildCheck, failure_reason

H200 = {"gpu": "NVIDIA H200", "capability": "9.0"}
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0"}
AGREE = {"out": 1e-4, "dq": 8e-4, "dk": 7e-4, "dv": 1.3e-3, "dg": 9e-4, "dh0": 1e-8}   # as measured on an H100


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDTHINK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GROUNDTHINK_KERNEL_CACHE", raising=False)
    monkeypatch.delenv("GROUNDTHINK_FLA_AUTOTUNE", raising=False)
    monkeypatch.setattr(fla_hopper, "HOPPER_CHECKS", {})
    monkeypatch.setattr(fla_hopper, "PENDING_CHECKS", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)


def on_gpu(monkeypatch, identity=H200):
    """Keys as on a machine with this GPU (this one has none)."""
    monkeypatch.setattr(kernel_cache, "gpu_identity", lambda device: dict(identity))


# Records (the store under both the Hopper verdicts and the warm-start records).

def test_record_hit_miss_and_keys_that_differ():
    key = {**H200, "triton": "3.6.0", "state_size": 16}
    assert kernel_cache.read_record("hopper", key) is None                        # miss
    path = kernel_cache.write_record("hopper", key, {"errors": AGREE})
    assert path.parent == backend.cache_root() / "kernels"
    assert kernel_cache.read_record("hopper", key) == {"errors": AGREE}           # hit
    for other in ({**key, **H100}, {**key, "triton": "3.7.0"}, {**key, "state_size": 32}):
        assert kernel_cache.read_record("hopper", other) is None                  # another GPU, version, size
    assert kernel_cache.read_record("warm", key) is None                          # another kind


@pytest.mark.parametrize("content", [b'{"format": 1, "key": {', b"", b"[1, 2]", b"\xff\xfe",
                                     b'{"format": 1, "key": {"gpu": "NVIDIA H100"}, "value": {}}',
                                     b'{"format": 99, "key": KEY, "value": {}}'])
def test_unreadable_or_foreign_record_is_a_miss_and_is_rewritten(content):
    key = {**H200, "triton": "3.6.0"}
    path = kernel_cache.write_record("hopper", key, {"errors": AGREE})
    path.write_bytes(content.replace(b"KEY", json.dumps(key).encode()))
    assert kernel_cache.read_record("hopper", key) is None
    kernel_cache.write_record("hopper", key, {"errors": AGREE})
    assert kernel_cache.read_record("hopper", key) == {"errors": AGREE}
    assert [p.name for p in path.parent.iterdir()] == [path.name]                 # no temporary file left


def test_kernel_cache_switch(monkeypatch):
    key = {**H200}
    kernel_cache.write_record("hopper", key, {"errors": AGREE})
    monkeypatch.setenv("GROUNDTHINK_KERNEL_CACHE", "0")
    assert kernel_cache.read_record("hopper", key) is None
    assert kernel_cache.write_record("hopper", {"other": 1}, {}) is None
    monkeypatch.setenv("GROUNDTHINK_KERNEL_CACHE", "no")
    with pytest.raises(ValueError, match="GROUNDTHINK_KERNEL_CACHE='no' is not 0 or 1"):
        backend.kernel_cache_enabled()


def test_autotune_mode_defaults_to_quick(monkeypatch):
    assert backend.fla_autotune_mode() == "quick"
    monkeypatch.setenv("GROUNDTHINK_FLA_AUTOTUNE", "full")
    assert backend.fla_autotune_mode() == "full"
    monkeypatch.setenv("GROUNDTHINK_FLA_AUTOTUNE", "fast")
    with pytest.raises(ValueError, match="GROUNDTHINK_FLA_AUTOTUNE='fast' is unknown; set quick"):
        backend.fla_autotune_mode()


def test_data_cache_root_is_the_machines_unless_configured(tmp_path):
    from types import SimpleNamespace

    from groundthink.data.sources import cache_root

    assert cache_root() == backend.cache_root() == tmp_path / "cache"
    assert cache_root(SimpleNamespace(cache_dir=str(tmp_path / "mine"))) == tmp_path / "mine"


# Hopper self-check verdicts on disk.

def test_stored_verdict_is_used_without_a_child(monkeypatch, recwarn):
    on_gpu(monkeypatch)
    fla_hopper.store_hopper_errors(16, 32, torch.bfloat16, "cuda:0", AGREE, None)
    fla_hopper.store_hopper_errors(64, 64, torch.bfloat16, "cuda:0", dict(AGREE, dk=0.5), None)  # FLA #640
    # A child on this machine would fail (no CUDA): True means the verdict came from disk.
    assert fla_hopper.hopper_chunk_verified(16, 32, torch.bfloat16, "cuda:0")
    assert not fla_hopper.hopper_chunk_verified(64, 64, torch.bfloat16, "cuda:0")
    assert fla_hopper.start_hopper_checks([(16, 32, torch.bfloat16)], "cpu") == 0  # off CUDA: nothing to do
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_stored_fault_says_where_it_is_stored(monkeypatch):
    on_gpu(monkeypatch)
    reason = "RuntimeError: CUDA error: an illegal memory access was encountered (exit status 1)"
    fla_hopper.store_hopper_errors(16, 32, torch.bfloat16, "cuda:0", {"fault": math.inf}, reason)
    with pytest.warns(RuntimeWarning, match="illegal memory access.*a verdict stored in .*hopper-"):
        assert not fla_hopper.hopper_chunk_verified(16, 32, torch.bfloat16, "cuda:0")


def test_stored_verdict_of_another_gpu_or_version_is_not_used(monkeypatch):
    on_gpu(monkeypatch, H100)
    fla_hopper.store_hopper_errors(16, 32, torch.bfloat16, "cuda:0", AGREE, None)
    assert fla_hopper.stored_hopper_errors(16, 32, torch.bfloat16, "cuda:0") == AGREE
    assert fla_hopper.stored_hopper_errors(16, 32, torch.float32, "cuda:0") is None      # another dtype
    on_gpu(monkeypatch, H200)
    assert fla_hopper.stored_hopper_errors(16, 32, torch.bfloat16, "cuda:0") is None     # another GPU
    on_gpu(monkeypatch, H100)
    versions = dict(kernel_cache.software_versions(), triton="3.7.1")
    monkeypatch.setattr(kernel_cache, "software_versions", lambda: versions)
    assert fla_hopper.stored_hopper_errors(16, 32, torch.bfloat16, "cuda:0") is None     # another Triton
    monkeypatch.setattr(fla_hopper, "HOPPER_CHECK_VERSION", fla_hopper.HOPPER_CHECK_VERSION + 1)
    assert fla_hopper.stored_hopper_errors(16, 32, torch.bfloat16, "cuda:0") is None


def test_corrupt_verdict_is_checked_again_and_the_warning_names_the_cause(monkeypatch):
    # The real child runs (and fails here: no CUDA); its warning quotes the cause, not the warnings the
    # child printed on the way (FLA's "roll back to CPU" warning).
    on_gpu(monkeypatch)
    fla_hopper.store_hopper_errors(16, 32, torch.bfloat16, "cuda:0", AGREE, None)
    path = kernel_cache.record_path("hopper", fla_hopper._record_key(16, 32, torch.bfloat16, "cuda:0"))
    path.write_text('{"format": 1, "key": {"gpu"')
    with pytest.warns(RuntimeWarning, match=r"self-check \(state size 16, head dim 32, torch.bfloat16\): the Hopper "
                                            r"self-check needs FLA's kernels on a CUDA device.*\(exit status 1\)") as caught:
        assert not fla_hopper.hopper_chunk_verified(16, 32, torch.bfloat16, "cuda:0")
    assert not any("Warning:" in str(w.message) for w in caught)
    # The child failed before the kernels ran (its environment, not the kernel): no verdict to store.
    assert path.read_text() == '{"format": 1, "key": {"gpu"'


def child_module(tmp_path, monkeypatch, name: str, body: str) -> str:
    """A module the child runs with -m (the same way as the Hopper check's child)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return name


def test_a_kernel_that_fails_after_the_start_is_a_stored_verdict(tmp_path, monkeypatch):
    on_gpu(monkeypatch)
    module = child_module(tmp_path, monkeypatch, "faulting_check", f"""
        print({STARTED_MARK!r}, flush=True)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
        """)
    key = fla_hopper._check_key(16, 32, torch.bfloat16, "cuda:0")
    fla_hopper.PENDING_CHECKS[key] = ChildCheck(module, [])
    with pytest.warns(RuntimeWarning, match="RuntimeError: CUDA error: an illegal memory access"):
        assert not fla_hopper.hopper_chunk_verified(16, 32, torch.bfloat16, "cuda:0")
    assert fla_hopper.HOPPER_CHECKS[key] == {"fault": math.inf} and not fla_hopper.PENDING_CHECKS
    record = kernel_cache.read_record("hopper", fla_hopper._record_key(16, 32, torch.bfloat16, "cuda:0"))
    assert record["errors"] == {"fault": math.inf} and "illegal memory access" in record["reason"]


def test_a_passing_child_started_early_is_collected_and_stored(tmp_path, monkeypatch):
    on_gpu(monkeypatch)
    module = child_module(tmp_path, monkeypatch, "passing_check", f"""
        import json
        print({STARTED_MARK!r}, flush=True)
        print(json.dumps({AGREE!r}))
        """)
    key = fla_hopper._check_key(128, 64, torch.bfloat16, "cuda:0")
    fla_hopper.PENDING_CHECKS[key] = ChildCheck(module, [])      # as start_hopper_checks leaves it
    assert fla_hopper.hopper_chunk_verified(128, 64, torch.bfloat16, "cuda:0")
    assert fla_hopper.stored_hopper_errors(128, 64, torch.bfloat16, "cuda:0") == AGREE


# How a child's failure is named.

def run_child(tmp_path, monkeypatch, body: str, timeout: float = 60):
    return ChildCheck(child_module(tmp_path, monkeypatch, "child_body", body), [], timeout).result()


def test_failure_reason_is_the_exception_not_a_later_warning(tmp_path, monkeypatch):
    result = run_child(tmp_path, monkeypatch, """
        import atexit, warnings
        warnings.warn("printed before the error", RuntimeWarning)
        atexit.register(lambda: warnings.warn("printed after the error", RuntimeWarning))
        print("groundthink-child-check: started", flush=True)
        def launch():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        launch()
        """)
    assert result.value is None and result.started and not result.environmental
    assert result.reason == "RuntimeError: CUDA error: an illegal memory access was encountered (exit status 1)"


def test_failure_reason_of_a_child_killed_by_a_signal(tmp_path, monkeypatch):
    result = run_child(tmp_path, monkeypatch, """
        import ctypes
        ctypes.string_at(0)
        """)
    assert result.reason.startswith("Fatal Python error: Segmentation fault at File ")
    assert result.reason.endswith("(killed by SIGSEGV)") and not result.started


def test_failure_reason_of_a_child_that_hangs(tmp_path, monkeypatch):
    result = run_child(tmp_path, monkeypatch, "import time; time.sleep(60)", timeout=1)
    assert result.reason == "no result after 1 s (stopped)" and result.environmental


def test_failure_reason_from_text():
    abort = ("<frozen runpy>:128: RuntimeWarning: 'x' found in sys.modules\n"
             "terminate called after throwing an instance of 'c10::Error'\n"
             "  what():  CUDA error: an illegal memory access was encountered\n"
             "/x/y.py:3: UserWarning: late\n  warnings.warn('late')\n")
    assert failure_reason(abort, -6) == "CUDA error: an illegal memory access was encountered (killed by SIGABRT)"
    assert failure_reason("<frozen runpy>:128: RuntimeWarning: only a warning\n", 1) == "exit status 1"
    chained = ("Traceback (most recent call last):\n  File \"a.py\", line 1\nKeyError: 'x'\n\nDuring handling of "
               "the above exception, another exception occurred:\n\nTraceback (most recent call last):\n"
               "  File \"a.py\", line 3\n    f()\nValueError: the final one\n")
    assert failure_reason(chained, 1) == "ValueError: the final one (exit status 1)"


# FLA's autotune entries in Triton's cache (Triton imported in these tests only: the fla extra).

def triton_entry(timings: dict) -> str:
    """An entry as Triton's Autotuner.check_disk_cache writes it (json of the key and config/timing pairs)."""
    return json.dumps({"key": ["64", "torch.bfloat16"],
                       "configs_timings": [(config.__dict__, t) for config, t in timings.items()]})


def read_like_triton(path):
    """What Triton's reader does with an entry: rebuild the configs, take the fastest."""
    import triton

    with open(path) as f:
        timings = {triton.Config(**fields): t for fields, t in json.load(f)["configs_timings"]}
    return min(timings, key=timings.get)


@pytest.mark.extra("fla")
def test_autotune_entry_hit_miss_corrupt_and_other_gpu(tmp_path, monkeypatch):
    import triton
    from triton.runtime.cache import FileCacheManager

    from groundthink.ops.autotune_cache import AUTOTUNE_SUFFIX, AutotuneCacheManager

    class H100Manager(AutotuneCacheManager):
        gpu_name = staticmethod(lambda: "NVIDIA H100 80GB HBM3")

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    fast, slow = triton.Config({"BK": 64}, num_warps=4, num_stages=2), triton.Config({"BK": 32}, num_warps=8)
    name = "chunk_fwd_kernel" + AUTOTUNE_SUFFIX
    manager = AutotuneCacheManager("samehash")
    assert manager.get_file(name) is None                                          # miss
    path = manager.put(triton_entry({fast: [0.1, 0.09, 0.12], slow: [0.3, 0.28, 0.33]}), name, binary=False)
    assert path.endswith("/cpu." + name)                                           # named per GPU model
    assert manager.get_file(name) == path
    best = read_like_triton(manager.get_file(name))                                # hit
    assert (best.kwargs, best.num_warps, best.num_stages) == ({"BK": 64}, 4, 2)
    assert H100Manager("samehash").get_file(name) is None                          # another GPU model
    for broken in ('{"key": [], "configs_timings": [[{"kwargs"', '{"configs_timings": []}',
                   '{"configs_timings": [[{"kwargs": {}, "num_warpz": 4}, 0.1]]}',
                   '{"configs_timings": [[{"kwargs": {}}, 0.1], [{"kwargs": {"BK": 1}}, [0.2]]]}',
                   '{"configs_timings": [[{"kwargs": {}}, "fast"]]}', '{"key": []}'):
        with open(path, "w") as f:
            f.write(broken)
        assert manager.get_file(name) is None, broken                              # corrupt: a miss ...
    manager.put(triton_entry({slow: 0.3}), name, binary=False)                     # ... that Triton rewrites
    assert read_like_triton(manager.get_file(name)).kwargs == {"BK": 32}
    # Compiled kernels and everything else: Triton's file cache as it is.
    assert manager.put(b"\x7fELF", "kernel.cubin") == FileCacheManager("samehash").get_file("kernel.cubin")


@pytest.mark.extra("fla")
def test_install_keeps_a_manager_the_user_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    from triton import knobs
    from triton.runtime.cache import FileCacheManager, get_cache_manager

    from groundthink.ops.autotune_cache import AutotuneCacheManager, install_autotune_cache

    class Mine(FileCacheManager):
        pass

    try:
        assert install_autotune_cache() and isinstance(get_cache_manager("ab12"), AutotuneCacheManager)
        assert install_autotune_cache()                                            # twice: the same
        knobs.cache.manager_class = Mine
        assert not install_autotune_cache() and knobs.cache.manager_class is Mine
    finally:
        knobs.cache.manager_class = knobs.env


@pytest.mark.extra("fla")
def test_every_fla_autotuner_is_prepared():
    # In a fresh process (FLA's autotuners are module state): quick cut and the on-disk switch reach all.
    code = textwrap.dedent("""
        import fla.ops.rwkv6, fla.ops.simple_gla
        from triton import knobs
        from groundthink.ops import backend
        from groundthink.ops.autotune_cache import AutotuneCacheManager
        n = backend.prepare_fla_autotuners("quick", on_disk=False)
        tuners = backend.fla_autotuners()
        assert n == len(tuners) > 50, n
        assert all(t.cache_results is False for t in tuners)
        assert all(getattr(t, "_groundthink_quick", False) or len(t.configs) <= 1 for t in tuners)
        assert knobs.cache.manager_class is None
        backend.prepare_fla_autotuners("quick", on_disk=True)
        assert all(t.cache_results is True for t in tuners)
        assert knobs.cache.manager_class is AutotuneCacheManager
        names = {t.base_fn.__name__ for t in tuners}
        assert {"chunk_rwkv6_fwd_cumsum_kernel", "chunk_bwd_kernel_dqkwg"} & names, sorted(names)[:20]
        print("ok", n)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]


# Warm-start records.

@pytest.mark.extra("fla")  # records name Triton's cache folder
def test_warm_start_records(tmp_path, monkeypatch):
    on_gpu(monkeypatch)
    monkeypatch.setattr(kernel_cache, "fla_available", lambda: True)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    (tmp_path / "triton").mkdir()
    shape = {"model": "GF-MH", "batch": 32, "seq_len": 64}
    assert not kernel_cache.kernels_warm(shape, "cuda:0")
    assert kernel_cache.cold_start_estimate_s("cuda:0") == kernel_cache.COLD_START_SECONDS["quick"]
    kernel_cache.record_kernels_warm(shape, "cuda:0", seconds=41.6)
    assert kernel_cache.kernels_warm(shape, "cuda:0")
    assert kernel_cache.cold_start_estimate_s("cuda:0") == 42                     # measured here, next time
    assert not kernel_cache.kernels_warm(dict(shape, seq_len=128), "cuda:0")       # another shape
    monkeypatch.setenv("GROUNDTHINK_FLA_AUTOTUNE", "full")
    assert not kernel_cache.kernels_warm(shape, "cuda:0")                          # another autotune mode
    assert kernel_cache.cold_start_estimate_s("cuda:0") == kernel_cache.COLD_START_SECONDS["full"]
    monkeypatch.delenv("GROUNDTHINK_FLA_AUTOTUNE")
    on_gpu(monkeypatch, H100)
    assert not kernel_cache.kernels_warm(shape, "cuda:0")                          # another GPU
    on_gpu(monkeypatch, H200)
    (tmp_path / "triton").rmdir()
    assert not kernel_cache.kernels_warm(shape, "cuda:0")                          # Triton's cache is gone


def test_nothing_to_compile_without_a_gpu():
    assert kernel_cache.kernels_warm({"model": "GF-MH"}, "cpu")
    assert kernel_cache.kernels_warm({"model": "GF-MH"}, "cuda:0")                 # this machine has no CUDA
    kernel_cache.record_kernels_warm({"model": "GF-MH"}, "cpu", seconds=3.0)
    assert not kernel_cache.records_dir().exists()
