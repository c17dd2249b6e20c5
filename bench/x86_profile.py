"""Per-kernel time of a compiled model (VM instrument hook), e.g. what host-vnni leaves to speed up.

    zsq quantize quartznet5x5 --frames 1000 -o /tmp/q5
    TVM_NUM_THREADS=1 python3 -m bench.x86_profile /tmp/q5 --target host-vnni --runs 5

Prints the total per run and the 25 most expensive kernels (ms per run, calls per run).  Times include
the VM's call overhead; integer input drawn with a fixed seed.
"""
import argparse
import collections
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qdir")
    ap.add_argument("--target", default="host-vnni")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    import numpy as np
    import tvm
    from tvm import relax

    import zsq_tvm
    from zsq_tvm.build import compile_relax

    q = zsq_tvm.load(a.qdir)
    ex, lowered, _, _ = compile_relax(q.mod, a.target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    p0 = lowered["main"].params[0].ty
    x = np.random.default_rng(0).integers(-127, 127, size=[int(s) for s in p0.shape]).astype(str(p0.dtype))
    xt = [tvm.runtime.tensor(x)]
    if len(lowered["main"].params) == 2:  # a --time-mask model: every frame valid
        xt.append(tvm.runtime.tensor(np.full(1, x.shape[-1], np.int32)))
    acc, cnt, st = collections.defaultdict(float), collections.Counter(), {}

    def instr(func, name, before, ret, *args):
        if before:
            st[name] = time.perf_counter()
        else:
            acc[name] += time.perf_counter() - st[name]
            cnt[name] += 1
        return 0

    vm["main"](*xt)
    vm.set_instrument(instr)
    t0 = time.perf_counter()
    for _ in range(a.runs):
        vm["main"](*xt)
    print(f"total {(time.perf_counter() - t0) / a.runs * 1e3:.1f} ms/run")
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{v / a.runs * 1e3:8.2f} ms  x{cnt[k] // a.runs:3d}  {k}")


if __name__ == "__main__":
    main()
