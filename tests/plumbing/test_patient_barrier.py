"""The patient group: ranks waiting on one rank's long work outlast the default group's timeout."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, time
    from datetime import timedelta
    import torch.distributed as dist
    from featcache.plumbing.distributed import barrier, patient_group
    dist.init_process_group("gloo", timeout=timedelta(seconds=1))  # the default group: short waits
    rank = dist.get_rank()
    patient = patient_group(timedelta(seconds=60))
    if rank == 0:
        time.sleep(2.5)  # rank 0's long work (a walk of every shard's headers)
    barrier(patient)
    print(f"rank {rank}: patient barrier passed", flush=True)
    if rank == 0:
        time.sleep(2.5)
    try:
        barrier()
        print(f"rank {rank}: default barrier passed", flush=True)
    except RuntimeError:
        print(f"rank {rank}: default barrier timed out", flush=True)
""")


def test_patient_group_outlasts_the_default_timeout(tmp_path):
    script = tmp_path / "wait.py"
    script.write_text(SCRIPT)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script)], capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    out = res.stdout
    assert "rank 0: patient barrier passed" in out and "rank 1: patient barrier passed" in out, res.stderr[-2000:]
    assert "rank 1: default barrier timed out" in out, out  # the wait the patient group spares
