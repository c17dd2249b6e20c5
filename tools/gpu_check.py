"""GPU check of the whole-model CUDA build: bit-exactness and INT8 vs FP32 speed, with the TVM runtime only.

prepare (here: full TVM + nvcc, no GPU)::

    python3 -m tools.gpu_check prepare DIR [--arch sm_90] [--models quartznet5x5,quartznet10x5,quartznet15x5]

writes into DIR/art/ (``tools/make_gpu_runtime_bundle.sh`` calls it; zsq_tvm comes from the checkout it is run
in, so to prepare another copy of the code, run it from that copy's root):

* ``exact_<model>.so`` for each ``--exact-models`` model (default: the shipped, trained QuartzNet-5x5 and
  Conformer-CTC-small), W8A8, T=1000, built for the CUDA target (pointwise convs on the int8 WMMA/dp4a
  kernels, depthwise convs on the int8 depthwise kernel, the rest dlight), weights embedded;
  ``exact_<model>_mel.npy`` a real utterance's mel, ``exact_<model>_ref.npy`` the numpy reference output
  (:func:`relax_passes.reference.run_reference`, bit-exact oracle), ``exact_<model>_ref_text.txt`` its greedy decoding;
  ``exact_<model>_masked``: the same with ``--time-mask`` (the utterance's real length as second input: the masks,
  incl. the Conformer's attention-softmax mask and its division-free integer long divisions, on the GPU);
* ``speed_<model>_{int8,fp32}[_graph].so``: QuartzNet-5x5/10x5/15x5 (random weights), T=1000, INT8 (same build
  as above) and FP32 (BatchNorm folded, same dlight rules, same nvcc flags) with every weight of more than
  4096 elements lifted to a runtime input (the device makes them from a seed: the bundle stays small);
  ``_graph``: the same build with TVM's CUDA graphs (launch overhead paid once), for both dtypes alike;
  ``speed_quartznet15x5-wmma32x32_int8[_graph]`` etc.: the INT8 build with another WMMA block tile
  (``WMMA_FRAG_MODEL_VARIANTS``; ``exact_quartznet5x5-wmma32x32`` likewise, checked bit for bit);
* ``kern_*.so`` + ``.npz``: the int8 kernels alone (dp4a and WMMA GEMMs in both layouts, depthwise, and
  schedule variants: WMMA k-tiles, depthwise tiles) with a numpy expected output; each is checked and timed
  (``kernel_us`` in the JSON);
* ``<lib>.fatbin``: each library's CUDA source compiled by nvcc here (``-gencode sm_XX`` SASS + PTX),
  found on the device by the SHA-256 of the source (``manifest.json``); TVM's CUDA module keeps the
  source and asks ``tvm_callback_cuda_compile`` for a binary when loaded: the run registers one that
  returns these, so the device needs neither nvcc nor NVRTC;
* ``manifest.json``: inputs, lifted parameters (name, shape, dtype), fatbin map.

run (the GPU machine: Python 3.12, numpy, CUDA driver, no TVM)::

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<bundle> python3 -m tools.gpu_check run <bundle>/art --out $OUT [--runs 20]

Local tests without a GPU: ``check-load ART`` loads every library (each CUDA module must get its fatbin; needs
a libcuda), and ``prepare DIR --arch llvm --exact-models quartznet-tiny --models quartznet-tiny`` + ``run --device cpu``
runs the same code path on the CPU.  Imports nothing from zsq_tvm.  Prints the GPU, one line per check, writes ``$OUT/gpu_check.json`` after
every step (so a timeout keeps what was measured) and exits 1 on a bit mismatch.  Each model is also profiled
kernel by kernel once (the VM's instrument hook, a device sync around every call: absolute times include
the sync, the ranking is what matters), top kernels in the JSON under ``profile``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FRAMES = 1000
LIFT_MIN = 4096  # constants with more elements become runtime inputs in the speed builds
SPEED_MODELS = ("quartznet5x5", "quartznet10x5", "quartznet15x5")
TIMING: dict = {}  # how _time measured (reported in the JSON)
# (T, K, M, activations, output): the last is the 29-class decoder writing int16 logits (out_bits=16, the default)
KERNEL_CASES = [(500, 256, 256, "uint8", "int8"), (500, 512, 29, "uint8", "int8"), (500, 512, 29, "uint8", "int16")]
# depthwise (C, Tin, K, stride, dilation, pad, activations): QuartzNet's C1 (stride 2, int8 input), a block
# layer, the dilated K=87 layer
DW_CASES = [(64, 1000, 33, 2, 1, 16, "int8"), (256, 500, 33, 1, 1, 16, "uint8"), (512, 500, 87, 1, 2, 86, "uint8")]
EXACT_MODELS = ("quartznet5x5", "conformer-ctc-small")
# schedule variants timed on the GPU (kernel section) to choose the defaults: the WMMA k-tile on a 512x512
# QuartzNet layer, and the depthwise tile (threads along time, outputs per thread, channels per block)
WMMA_BK_VARIANTS = ((500, 512, 512, "uint8"), (16, 32, 64))
# WMMA block tiles other than the default (int8_gemm.WMMA_WARP_FRAGS = (2, 1): 64 x 32 outputs, chosen with these
# in Session 11): fragments per warp, 2 x 2 warps per block, (1, 1) = 32 x 32.  Timed on two QuartzNet layers, and
# as whole models: QuartzNet-15x5 for speed (int8, plain and CUDA graph, against the same FP32 build) and the
# trained QuartzNet-5x5 for bit-exactness
WMMA_FRAG_VARIANTS = (((500, 512, 512, "uint8"), (500, 256, 256, "uint8")), ((2, 2), (1, 2), (1, 1)))
WMMA_FRAG_MODEL_VARIANTS = (("quartznet15x5",), ("quartznet5x5",), ((1, 1), (2, 2)))


def _frag_tag(frags) -> str:
    return f"wmma{32 * frags[0]}x{32 * frags[1]}"


@contextlib.contextmanager
def _wmma_frags(frags):
    """Build with another default WMMA block tile (``int8_gemm.WMMA_WARP_FRAGS``, which the pointwise-conv
    pass's ``schedule_wmma`` reads); ``None``: the default."""
    from zsq_tvm.backends.cuda import int8_gemm as g

    saved = g.WMMA_WARP_FRAGS
    g.WMMA_WARP_FRAGS = tuple(frags) if frags else saved
    try:
        yield
    finally:
        g.WMMA_WARP_FRAGS = saved


DW_TILE_VARIANTS = ((512, 500, 87, 1, 2, 86, "uint8"),
                    ((128, 4, 2), (64, 4, 4), (128, 2, 2), (32, 4, 8), (256, 2, 1), (128, 4, 1), (512, 1, 1)))


# ============================================================================ prepare (full TVM)
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cuda_sources(lib) -> list[str]:
    mods, out = [getattr(lib, "mod", lib)], []
    while mods:
        m = mods.pop()
        if m.kind == "cuda":
            out.append(m.inspect_source())
        mods.extend(m.imports)
    return out


def _fatbin(src: str, path: str, arch: str):
    """nvcc the CUDA source of a library to a fatbin: SASS for ``arch`` and PTX for its compute level."""
    import tempfile

    num = arch.split("_")[1]
    with tempfile.TemporaryDirectory() as td:
        cu = os.path.join(td, "k.cu")
        with open(cu, "w") as f:
            f.write(src)
        subprocess.run(["nvcc", "-fatbin", "-O3", f"-gencode=arch=compute_{num},code=sm_{num}",
                        f"-gencode=arch=compute_{num},code=compute_{num}", "-o", path, cu],
                       check=True, capture_output=True, text=True)


def _export(lib, art: str, name: str, arch: str, man: dict, extra: dict):
    path = os.path.join(art, name + ".so")
    lib.export_library(path)
    srcs = _cuda_sources(lib)
    fb = {}
    for i, src in enumerate(srcs):
        fname = f"{name}.{i}.fatbin"
        _fatbin(src, os.path.join(art, fname), arch)
        fb[_sha(src)] = fname
    man["libs"][name] = dict(extra, so=name + ".so", fatbins=fb)
    print(f"prepared {name}: {os.path.getsize(path) / 1e6:.2f} MB .so, {len(srcs)} CUDA module(s)", flush=True)


def _lift_constants(mod, min_size: int = LIFT_MIN, static_weights: bool = False):
    """main's relax constants with >= min_size elements -> extra parameters; returns (mod, [(name, shape, dtype)]).
    ``static_weights``: ``num_input`` stays the original inputs' count (the lifted ones are weights, static for
    CUDA graphs); else every parameter is a runtime input."""
    import tvm
    from tvm import relax

    lifted = []

    @relax.expr_functor.mutator
    class Lift(relax.PyExprMutator):
        def visit_generic_const_(self, c):  # relax constants are tvm.ir.expr.GenericConst in TVM 0.27
            a = c.value
            shape = [int(s) for s in a.shape]
            if int(np.prod(shape)) < min_size:
                return c
            v = relax.Var(f"w{len(lifted)}", relax.TensorType(shape, str(a.dtype)))
            lifted.append((v, shape, str(a.dtype)))
            return v

    gv = mod.get_global_var("main")
    f = mod[gv]
    body = Lift(mod).visit_expr(f)
    newf = relax.Function(list(f.params) + [v for v, _, _ in lifted], body.body, f.ret_ty, f.is_pure, f.attrs)
    newf = newf.with_attr("num_input", len(f.params) + (0 if static_weights else len(lifted)))
    out = tvm.IRModule({g: fn for g, fn in mod.functions.items()}, attrs=mod.attrs)
    out[gv] = newf
    out = relax.transform.Normalize()(out)
    return out, [(str(v.name), s, d) for v, s, d in lifted]


def _build(mod, target, int8: bool, lift: bool = False, cuda_graph: bool = False):
    """Quantized (int8) or float Relax module -> executable: the zsq CUDA target's pipeline (int8 GEMM
    kernels + dlight), or plain ``tvm.compile`` for an llvm target (local test of the runner).
    ``lift``: weights become inputs (returns ``(exe, params)``).  ``cuda_graph``: TVM's RewriteCUDAGraph
    (``relax.backend.use_cuda_graph``) captures the kernel launches after the first call and replays them;
    the lifted weights are then declared static (``num_input`` = 1), as they are the same tensors every call."""
    import tvm

    from zsq_tvm.backends.cuda.pipeline import compile_lowered, prepare
    from relax_passes.lowering import lower

    cuda = target.kind.name == "cuda"
    if int8 and cuda:
        mod = prepare(mod)
    params = []
    if lift:
        mod, params = _lift_constants(mod, static_weights=cuda_graph)
    with target:
        low = lower(mod)
    with tvm.transform.PassContext(opt_level=3, config={"relax.backend.use_cuda_graph": bool(cuda_graph)}):
        ex = compile_lowered(low, target) if cuda else tvm.compile(low, target=target)
    return (ex, params) if lift else ex


def prepare(out: str, arch: str, models: list[str], skip_speed: bool = False,
            exact_models: tuple = EXACT_MODELS):
    import tvm

    import zsq_tvm
    from zsq_tvm.audio.mel import MelConfig, MelFrontend, load_wav
    from relax_passes.reference import run_reference

    art = os.path.join(out, "art")
    os.makedirs(art, exist_ok=True)
    cuda = arch != "llvm"  # arch "llvm": same artifacts for the CPU (local test of `run --device cpu`)
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host="llvm") if cuda else tvm.target.Target("llvm")
    man = {"arch": arch, "frames": FRAMES, "libs": {}, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t0 = time.time()

    # ---- kernels alone
    from zsq_tvm.backends.cuda import int8_gemm as g

    def kernel(name, sch, X, W, B, Mul, Sh, want):
        """Export one scheduled kernel and its operands + numpy expected output (``run`` checks and times it)."""
        _export(g.build(sch, target), art, name, arch, man, {"kind": "kernel"})
        np.savez(os.path.join(art, name + ".npz"), X=X, W=W, B=B, Mul=Mul, Sh=Sh, want=want)

    for T_, K, M, a, od in (KERNEL_CASES if cuda else []):
        qmin, qmax = (-32767, 32767) if od == "int16" else (-127, 127)
        spec = g.GemmSpec(T_, K, M, a_dtype=a, out_dtype=od, qmin=qmin, qmax=qmax)
        X, W, bias, Mul, Sh = g.random_problem(spec, seed=T_ + K + M)
        for kind, fn, layout in (("dp4a", g.schedule_dp4a, "tk"), ("wmma", g.schedule_wmma, "tk"),
                                 ("wmma", g.schedule_wmma, "ncw")):
            if kind == "wmma" and M < 64:
                continue
            sp = dataclasses.replace(spec, layout=layout)
            Xl = X if layout == "tk" else np.ascontiguousarray(X.T[None])
            name = f"kern_{kind}_{layout}_{T_}x{K}x{M}_{a}" + ("" if od == "int8" else f"_{od}")
            kernel(name, fn(sp), Xl, W, g.kernel_bias(sp, W, bias, kind), Mul, Sh, g.reference(sp, Xl, W, bias, Mul, Sh))
    if cuda:
        (T_, K, M, a), bks = WMMA_BK_VARIANTS
        spec = g.GemmSpec(T_, K, M, a_dtype=a, layout="ncw")
        X, W, bias, Mul, Sh = g.random_problem(spec, seed=7)
        for bk in bks:
            kernel(f"kern_wmma_ncw_{T_}x{K}x{M}_{a}_bk{bk}", g.schedule_wmma(spec, bk=bk), X, W,
                   g.kernel_bias(spec, W, bias, "wmma"), Mul, Sh, g.reference(spec, X, W, bias, Mul, Sh))
        shapes, frag_list = WMMA_FRAG_VARIANTS
        for T_, K, M, a in shapes:
            spec = g.GemmSpec(T_, K, M, a_dtype=a, layout="ncw")
            X, W, bias, Mul, Sh = g.random_problem(spec, seed=11)
            for frags in frag_list:
                kernel(f"kern_wmma_ncw_{T_}x{K}x{M}_{a}_{_frag_tag(frags)}", g.schedule_wmma(spec, frags=frags),
                       X, W, g.kernel_bias(spec, W, bias, "wmma"), Mul, Sh, g.reference(spec, X, W, bias, Mul, Sh))
    from zsq_tvm.backends.cuda import depthwise as dwk

    def dw_spec(C, Tin, K, st, dl, pad, a):
        return dwk.DwSpec(C=C, Tin=Tin, K=K, stride=st, dilation=dl, pad_l=pad, pad_r=pad, a_dtype=a)

    if cuda:
        case, tiles = DW_TILE_VARIANTS
        base = dw_spec(*case)
        X, W, bias, Mul, Sh = dwk.random_problem(base, seed=7)
        for tx, vt, cb in tiles:
            spec = dataclasses.replace(base, tx=tx, vt=vt, cb=cb)
            kernel(f"kern_dw_c{base.C}_t{base.Tin}_k{base.K}_s{base.stride}_d{base.dilation}_{base.a_dtype}"
                   f"_tx{tx}_vt{vt}_cb{cb}", dwk.schedule(spec), X, W, bias, Mul, Sh,
                   dwk.reference(spec, X, W, bias, Mul, Sh))
    for case in (DW_CASES if cuda else []):
        spec = dw_spec(*case)
        X, W, bias, Mul, Sh = dwk.random_problem(spec, seed=spec.C + spec.K)
        kernel(f"kern_dw_c{spec.C}_t{spec.Tin}_k{spec.K}_s{spec.stride}_d{spec.dilation}_{spec.a_dtype}",
               dwk.schedule(spec), X, W, bias, Mul, Sh, dwk.reference(spec, X, W, bias, Mul, Sh))

    # ---- trained models, W8A8, bit-exact check on a real utterance
    import torch

    wav = os.path.join(ROOT, "tests", "fixtures", "real", "wav", "librivox-0870.wav")
    with torch.no_grad():
        mel = MelFrontend(MelConfig())(torch.from_numpy(load_wav(wav))[None].float())
    mel = mel[0] if isinstance(mel, (tuple, list)) else mel
    mel = np.asarray(mel, np.float32).reshape(1, 64, -1)
    x = np.zeros((1, 64, FRAMES), np.float32)
    n = min(FRAMES, mel.shape[2])
    x[:, :, :n] = mel[:, :, :n]
    for model, masked in [(m, False) for m in exact_models] + [(m, True) for m in exact_models]:
        # masked: the --time-mask build, told the utterance's n real frames (relax_passes/time_mask.py)
        name = f"exact_{model}" + ("_masked" if masked else "")
        q = zsq_tvm.quantize(model, zsq_tvm.QuantConfig(frames=FRAMES, time_mask=masked))
        ref = run_reference(q.mod, x, *([np.array([n], np.int32)] if masked else []))
        ref = ref[0] if isinstance(ref, tuple) else ref
        np.save(os.path.join(art, name + "_mel.npy"), x)
        np.save(os.path.join(art, name + "_ref.npy"), ref)
        vocab = q.vocab
        if vocab is not None:
            from zsq_tvm.ctc import greedy_decode

            with open(os.path.join(art, name + "_ref_text.txt"), "w") as f:
                f.write(greedy_decode(ref, vocab, q.manifest.get("logits_layout", "auto"))[0] + "\n")
        print(f"{model}: quantized + reference at {time.time() - t0:.0f} s", flush=True)
        # the build itself, and (CUDA, unmasked) the same model with the other WMMA block tiles: same reference
        tiles = [None] + list(WMMA_FRAG_MODEL_VARIANTS[2] if cuda and not masked
                              and model in WMMA_FRAG_MODEL_VARIANTS[1] else [])
        for frags in tiles:
            with _wmma_frags(frags):
                ex = _build(q.mod, target, int8=True)
            lname = name + (f"-{_frag_tag(frags)}" if frags else "")
            _export(ex, art, lname, arch, man,
                    {"kind": "model", "model": model, "inputs": [["mel", [1, 64, FRAMES], "float32"]]
                     + ([["length", [1], "int32"]] if masked else []), "params": [],
                     "mel": name + "_mel.npy", "ref": name + "_ref.npy", **({"length": n} if masked else {})})
            print(f"{lname} built at {time.time() - t0:.0f} s", flush=True)
    with open(os.path.join(art, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1)
    if skip_speed:
        return 0

    # ---- speed: INT8 vs FP32, random weights lifted to inputs
    from relax_passes.fold_batchnorm import FoldBatchNorm
    from zsq_tvm.frontend.onnx_import import import_onnx
    from zsq_tvm.zoo.nets import build_model, randomize_batchnorm
    from zsq_tvm.zoo.nets.export import export_onnx

    import onnx
    import tempfile

    for model in models:
        torch.manual_seed(0)
        net = build_model(model).eval()
        net.name = model
        randomize_batchnorm(net)  # trained-like BN statistics: activations keep their scale through 15 blocks
        with tempfile.TemporaryDirectory() as td:
            p = export_onnx(net, os.path.join(td, model + ".onnx"), frames=FRAMES)
            proto = onnx.load(str(p))
        qm = zsq_tvm.quantize(proto, zsq_tvm.QuantConfig(frames=FRAMES, num_batches=2))
        fmod, _info, proto_s = import_onnx(proto, frames=FRAMES, batch=1, features=64)
        try:
            fold = FoldBatchNorm(onnx_model=proto_s)
        except TypeError:
            fold = FoldBatchNorm()
        # (model name, WMMA tile, dtype, module): the two builds, and (CUDA) the INT8 one with the other WMMA
        # block tiles, whose speed-up is taken against the FP32 build of the same model ("base_model")
        builds = [(model, None, "int8", qm.mod), (model, None, "fp32", fold(fmod))]
        if cuda and model in WMMA_FRAG_MODEL_VARIANTS[0]:
            builds += [(f"{model}-{_frag_tag(f)}", f, "int8", qm.mod) for f in WMMA_FRAG_MODEL_VARIANTS[2]]
        for bmodel, frags, kind, mod in builds:
            # plain, and (CUDA) with CUDA graphs: the same kernels, the launches replayed as one graph
            for graph in ((False, True) if cuda else (False,)):
                name = f"speed_{bmodel}_{kind}" + ("_graph" if graph else "")
                try:
                    with _wmma_frags(frags):
                        ex, params = _build(mod, target, int8=kind == "int8", lift=True, cuda_graph=graph)
                except Exception as e:  # noqa: BLE001 - a graph build that fails must not cost the plain ones
                    if not graph:
                        raise
                    print(f"  {name}: not built ({type(e).__name__}: {str(e)[:200]})", flush=True)
                    continue
                _export(ex, art, name, arch, man,
                        {"kind": "speed", "model": bmodel, "dtype": kind, "cuda_graph": graph,
                         "inputs": [["mel", [1, 64, FRAMES], "float32"]], "params": params,
                         **({"base_model": model} if frags else {})})
                print(f"  {name}: {len(params)} lifted params, at {time.time() - t0:.0f} s", flush=True)
                with open(os.path.join(art, "manifest.json"), "w") as f:
                    json.dump(man, f, indent=1)
    return 0


# ============================================================================ run (TVM runtime only)
def _load_runtime_libs() -> list[str]:
    """Runtime-only ``import tvm`` loads libtvm_runtime.so alone: load the CUDA runtime module loader
    (libtvm_runtime_cuda.so, which needs libcudart.so.13: bundled next to it) and the extras."""
    import ctypes

    import tvm

    d = os.path.join(os.path.dirname(tvm.__file__), "lib")
    done = []
    for n in ("libcudart.so.13", "libtvm_runtime_cuda.so", "libtvm_runtime_extra.so"):
        p = os.path.join(d, n)
        if os.path.exists(p):
            ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL)
            done.append(n)
    return done


def check_load(art: str) -> int:
    """Load every library of the bundle (each CUDA module gets its prebuilt fatbin); no device needed
    beyond a loadable libcuda.  Exit 1 if a library fails or a source has no fatbin."""
    from tvm import runtime

    print("runtime libs:", ", ".join(_load_runtime_libs()), flush=True)
    with open(os.path.join(art, "manifest.json")) as f:
        man = json.load(f)
    seen = _register_fatbins(art, man)
    bad = 0
    for name, lib in sorted(man["libs"].items()):
        n0 = len(seen)
        try:
            m = runtime.load_module(os.path.join(art, lib["so"]))
            kinds = [i.kind for i in m.imports]
            ok = len(seen) - n0 == len(lib["fatbins"])
            print(f"{'OK  ' if ok else 'FAIL'} load {name}: imports {kinds}, {len(seen) - n0}/{len(lib['fatbins'])} "
                  "fatbin(s) served", flush=True)
        except Exception as e:
            ok = False
            print(f"ERR  load {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        bad += not ok
    print("ALL LOADED" if not bad else f"{bad} FAILED", flush=True)
    return 1 if bad else 0


def _register_fatbins(art: str, man: dict):
    """tvm_callback_cuda_compile -> the fatbin nvcc made for this exact source at prepare time."""
    import tvm_ffi

    table = {}
    for lib in man["libs"].values():
        for sha, fname in lib["fatbins"].items():
            table[sha] = os.path.join(art, fname)
    seen = []

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *_rest):
        sha = _sha(str(code))
        if sha not in table:
            raise RuntimeError(f"no prebuilt fatbin for CUDA source {sha[:12]} (bundle out of date: rebuild it)")
        seen.append(sha)
        with open(table[sha], "rb") as f:
            return bytearray(f.read())

    return seen


def _params(spec, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for _name, shape, dtype in spec:
        if dtype == "int8":
            out.append(rng.integers(-127, 128, shape, dtype=np.int8))
        elif dtype.startswith("float"):
            fan_in = max(1, int(np.prod(shape[1:])))
            out.append((rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(dtype))
        else:
            out.append(rng.integers(-1000, 1000, shape).astype(dtype))
    return out


def _first(y):
    if hasattr(y, "numpy"):
        return y
    return y[0]


def run(art: str, out_dir: str, runs: int, budget_s: float, device: str = "cuda"):
    t_start = time.time()
    import tvm
    from tvm import runtime
    from tvm.runtime import vm as rvm  # not imported by `import tvm` in runtime-only mode

    res = {"ok": None, "bit_exact": {}, "speed_ms": {}, "speedup_int8_vs_fp32": {}, "errors": []}
    out_path = os.path.join(out_dir, "gpu_check.json")

    def save():
        res["elapsed_s"] = round(time.time() - t_start, 2)
        os.makedirs(out_dir, exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)

    with open(os.path.join(art, "manifest.json")) as f:
        man = json.load(f)
    res["bundle"] = {"arch": man["arch"], "built": man.get("built"), "frames": man.get("frames")}
    if device == "cuda":
        try:
            res["runtime_libs"] = _load_runtime_libs()
        except OSError as e:  # no driver (libcuda.so.1) or a driver too old for libcudart.so.13
            res["errors"].append(f"TVM CUDA runtime does not load: {e}")
            save()
            print(f"FAIL: TVM CUDA runtime does not load ({e}); it needs a CUDA 13 capable driver", flush=True)
            return 2
    seen = _register_fatbins(art, man)
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    if not dev.exist:
        res["errors"].append(f"no {device} device visible to the TVM runtime")
        save()
        print(f"FAIL: no {device} device", flush=True)
        return 2
    res["device"] = device
    if device == "cuda":
        try:
            res["gpu"] = str(dev.device_name)
        except Exception as e:  # noqa: BLE001 - the shell script prints nvidia-smi's name too
            res["gpu"] = f"? ({type(e).__name__})"
        res["compute_version"] = str(dev.compute_version)
    else:
        res["gpu"], res["compute_version"] = "none (cpu run)", "-"
    res["tvm"] = getattr(tvm, "__version__", "?")
    print(f"GPU: {res['gpu']} (compute {res['compute_version']}), bundle built for {man['arch']}", flush=True)
    save()
    bad = 0

    # ---- kernels
    for name, lib in sorted(man["libs"].items()):
        if lib["kind"] != "kernel":
            continue
        try:
            d = np.load(os.path.join(art, name + ".npz"))
            m = runtime.load_module(os.path.join(art, lib["so"]))
            f = m["main"]
            args = [runtime.tensor(d[k], dev) for k in ("X", "W", "B", "Mul", "Sh")]
            y = runtime.tensor(np.zeros_like(d["want"]), dev)
            f(*args, y)
            dev.sync()
            ok = bool(np.array_equal(y.numpy(), d["want"]))
            res["bit_exact"][name] = ok
            bad += not ok
            us = float(np.median(m.time_evaluator("main", dev, number=20, repeat=5)(*args, y).results) * 1e6)
            res.setdefault("kernel_us", {})[name] = round(us, 2)
            print(f"{'OK  ' if ok else 'FAIL'} {name}  {us:8.1f} us", flush=True)
        except Exception as e:
            res["errors"].append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
            bad += 1
            print(f"ERR  {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        save()

    # ---- trained models W8A8, bit-exact vs the numpy reference
    for name, lib in sorted(man["libs"].items()):
        if lib["kind"] != "model":
            continue
        try:
            mod = runtime.load_module(os.path.join(art, lib["so"]))
            vm = rvm.VirtualMachine(mod, dev)
            x = np.load(os.path.join(art, lib["mel"]))
            want = np.load(os.path.join(art, lib["ref"]))
            args = [runtime.tensor(x, dev)]
            if "length" in lib:  # a --time-mask build
                args.append(runtime.tensor(np.array([lib["length"]], np.int32), dev))
            got = _first(vm["main"](*args)).numpy()
            ok = bool(got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want))
            res["bit_exact"][name] = ok
            res.setdefault("mismatches", {})[name] = int((got != want).sum()) if got.shape == want.shape else -1
            bad += not ok
            ms = _time(vm, args, dev, runs)
            res["speed_ms"][name] = ms
            print(f"{'OK  ' if ok else 'FAIL'} {name} ({lib.get('model')} W8A8, T={x.shape[2]}) vs numpy reference"
                  f" {'' if ok else res['mismatches'][name]} ; {ms:.3f} ms", flush=True)
            _profile(res, name, mod, args, dev, rvm)
        except Exception as e:
            res["errors"].append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
            bad += 1
            print(f"ERR  {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        save()

    # ---- speed
    speed_models = list(dict.fromkeys(lib["model"] for lib in man["libs"].values() if lib["kind"] == "speed"))
    outs: dict = {}
    for model in speed_models:
        for kind in ("int8", "fp32", "int8_graph", "fp32_graph"):
            name = f"speed_{model}_{kind}"
            lib = man["libs"].get(name)
            if lib is None:
                continue
            if time.time() - t_start > budget_s:
                res["errors"].append(f"{name}: skipped, time budget {budget_s:.0f} s spent")
                print(f"SKIP {name}: time budget spent", flush=True)
                continue
            try:
                mod = runtime.load_module(os.path.join(art, lib["so"]))
                vm = rvm.VirtualMachine(mod, dev)
                x = np.random.default_rng(1).standard_normal((1, 64, man["frames"]), dtype=np.float32)
                args = [runtime.tensor(x, dev)] + [runtime.tensor(a, dev) for a in _params(lib["params"], 0)]
                ms = _time(vm, args, dev, runs)
                res["speed_ms"][name] = ms
                print(f"TIME {name}: {ms:.3f} ms (median of {runs})", flush=True)
                y = _first(vm["main"](*args)).numpy()
                plain = outs.get(name[: -len("_graph")]) if lib.get("cuda_graph") else None
                if plain is not None:  # a replayed graph must compute exactly what the plain launches do
                    same = bool(np.array_equal(y, plain))
                    res.setdefault("graph_equals_plain", {})[name] = same
                    bad += not same and kind.startswith("int8")
                    print(f"{'OK  ' if same else 'FAIL'} {name} output == plain launches' output", flush=True)
                outs[name] = y
                if not lib.get("cuda_graph") and time.time() - t_start < budget_s:
                    _profile(res, name, mod, args, dev, rvm)  # (a graph replay hides its kernels from the hook)
            except Exception as e:
                res["errors"].append(f"{name}: {type(e).__name__}: {str(e)[:300]}")
                print(f"ERR  {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            suffix = kind[4:]  # "" or "_graph"
            base = lib.get("base_model", model)  # a schedule variant: its FP32 is the base model's
            i8 = res["speed_ms"].get(f"speed_{model}_int8{suffix}")
            f32 = res["speed_ms"].get(f"speed_{base}_fp32{suffix}")
            if (kind.startswith("fp32") or base != model) and i8 and f32:
                res["speedup_int8_vs_fp32"][model + suffix] = round(f32 / i8, 3)
                print(f"     {model}{suffix}: INT8 {f32 / i8:.2f}x faster than FP32", flush=True)
            save()
    res["fatbins_used"] = len(seen)
    res["timing"] = dict(TIMING, runs=runs)
    res["ok"] = bad == 0
    save()
    print("ALL BIT-EXACT" if bad == 0 else f"{bad} CHECK(S) FAILED", flush=True)
    return 0 if bad == 0 else 1


def _profile(res: dict, name: str, mod, args, dev, rvm, reps: int = 3, top: int = 12):
    """Per-kernel time of one model, from a fresh VM whose instrument hook syncs the device and reads the clock
    around every call (``reps`` runs after one warm-up).  Writes ``res["profile"][name]``: the ``top`` calls
    by total time (symbol, calls per run, microseconds per run) and the sum over all calls; prints the top 6."""
    vm = rvm.VirtualMachine(mod, dev)
    stats: dict = {}
    state = {"on": False}

    def instrument(func, sym, before, ret, *a):
        if not state["on"]:
            return 0
        dev.sync()
        if before:
            state["t"] = time.perf_counter()
        else:
            s = stats.setdefault(str(sym), [0, 0.0])
            s[0] += 1
            s[1] += time.perf_counter() - state["t"]
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    vm["main"](*args)
    dev.sync()
    state["on"] = True
    t = time.perf_counter()
    for _ in range(reps):
        vm["main"](*args)
    dev.sync()
    wall = (time.perf_counter() - t) / reps
    rows = sorted(stats.items(), key=lambda kv: -kv[1][1])
    total = sum(v[1] for _, v in rows) / reps
    res.setdefault("profile", {})[name] = {
        "wall_us_per_run_with_syncs": round(wall * 1e6, 1), "calls_per_run": sum(v[0] for _, v in rows) // reps,
        "sum_us_per_run": round(total * 1e6, 1),
        "top": [{"symbol": k, "calls": v[0] // reps, "us": round(v[1] / reps * 1e6, 1)} for k, v in rows[:top]]}
    print(f"     profile {name}: {res['profile'][name]['calls_per_run']} calls, "
          f"{total * 1e3:.3f} ms with a sync per call; top:", flush=True)
    for r in res["profile"][name]["top"][:6]:
        print(f"       {r['us']:9.1f} us  x{r['calls']:<3d} {r['symbol'][:90]}", flush=True)


def _time(vm, args, dev, runs: int) -> float:
    """Median time of ``main`` (ms) after 3 warm-up calls: TVM's time_evaluator on the VM's stateful
    invoke (inputs set once, device-synchronized per repeat, no Python per call); a Python loop with
    ``dev.sync()`` where that is unavailable."""
    for _ in range(3):
        vm["main"](*args)
    dev.sync()
    try:
        vm.set_input("main", *args)
        te = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=runs)
        ms = float(np.median(te("main").results) * 1e3)
        TIMING["method"] = "time_evaluator(invoke_stateful)"
        return ms
    except Exception as e:  # noqa: BLE001 - fall back to wall time around each call
        TIMING["method"] = f"python loop + dev.sync() ({type(e).__name__})"
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            vm["main"](*args)
            dev.sync()
            ts.append((time.perf_counter() - t) * 1e3)
        return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--models", default=",".join(SPEED_MODELS))
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--exact-models", default=",".join(EXACT_MODELS),
                   help="the bit-exact checks' models (shipped names, comma-separated)")
    r = sub.add_parser("run")
    r.add_argument("art")
    r.add_argument("--out", default=os.environ.get("OUT", "."))
    r.add_argument("--runs", type=int, default=20)
    r.add_argument("--budget-s", type=float, default=110.0, help="skip remaining speed cases after this")
    r.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: local test with llvm artifacts")
    c = sub.add_parser("check-load", help="load every library of a bundle (fatbin lookup), run nothing")
    c.add_argument("art")
    a = ap.parse_args(argv)
    if a.mode == "check-load":
        return check_load(a.art)
    if a.mode == "prepare":
        return prepare(a.dir, a.arch, [m for m in a.models.split(",") if m], a.skip_speed,
                       tuple(m for m in a.exact_models.split(",") if m))
    return run(a.art, a.out, a.runs, a.budget_s, a.device)


if __name__ == "__main__":
    sys.exit(main())
