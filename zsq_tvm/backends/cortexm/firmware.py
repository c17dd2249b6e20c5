"""Cortex-M firmware from a quantized model: TVM `c` kernels + a static driver (no malloc).

:func:`generate` walks the lowered Relax ``main`` (:func:`relax_passes.lowering.lower`), compiles every
PrimFunc between the two boundary kernels with ``tvm.compile(..., target=Target({"kind": "c"}))``,
plans all intermediate tensors into one static arena (buffers reused by lifetime) and writes a
self-contained source folder (kernels, ``model.c``/``model.h`` with ``zsq_run``, ``const`` weights,
support code, startup, linker script, Makefile).  The firmware takes the *already quantized* input
(the host applies the input quantize with its scale) and returns the integer logits (the host
dequantizes).  :func:`build` runs make, :func:`check_symbols` proves there is no float / libm /
malloc in the linked ELF, :func:`run_qemu` runs it on an emulated Cortex-M.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zsq_tvm.backends.cortexm import templates as T
from zsq_tvm.core import intmath
from zsq_tvm.core.errors import ConfigError, NotAvailableError, TargetError, ZsqError

BOARDS = {
    # name: (mcpu, qemu machine, default flash budget, default RAM budget)
    "cortex-m4": ("cortex-m4", "mps2-an386", 1 << 20, 256 << 10),
    "cortex-m7": ("cortex-m7", "mps2-an500", 1 << 20, 256 << 10),
}
QEMU_MAX = 4 << 20  # both QEMU boards: 4 MiB code RAM at 0x0, 4 MiB RAM at 0x20000000
ALIGN = 16
DEFAULT_STACK = 16 << 10
ROLE = "zsq.role"
VIEW_OPS = {"relax.reshape", "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.memory.view"}


class FirmwareError(ZsqError):
    """A model or toolchain problem of the Cortex-M target."""
    exit_code = 2


class BudgetError(FirmwareError):
    """The model does not fit the board's flash/RAM budget."""
    exit_code = 2


def toolchain_missing() -> str | None:
    """``None`` when arm-none-eabi-gcc, -nm, -size and qemu-system-arm are on PATH, else a reason."""
    miss = [t for t in ("arm-none-eabi-gcc", "arm-none-eabi-nm", "arm-none-eabi-size", "make")
            if shutil.which(t) is None]
    return ("missing " + ", ".join(miss) + " (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi make)") \
        if miss else None


def qemu_missing() -> str | None:
    return None if shutil.which("qemu-system-arm") else "missing qemu-system-arm (apt-get install qemu-system-arm)"


# --------------------------------------------------------------------------- graph walk
@dataclass
class Buf:
    idx: int
    nbytes: int
    kind: str  # arena | const | input | output
    first: int = -1
    last: int = -1
    offset: int = -1
    const: np.ndarray | None = None


@dataclass
class TensorRef:  # one DLTensor: a (possibly reshaped) view of a buffer
    idx: int
    buf: Buf
    shape: tuple
    dtype: str


@dataclass
class Plan:
    calls: list = field(default_factory=list)  # (kernel name, [TensorRef])
    tensors: list = field(default_factory=list)
    bufs: list = field(default_factory=list)
    prim_funcs: dict = field(default_factory=dict)  # name -> PrimFunc
    input: TensorRef | None = None
    length: TensorRef | None = None  # a --time-mask model's valid frames (int32 [B])
    output: TensorRef | None = None
    input_quant: dict | None = None  # boundary parameters for the host side
    output_scale: float | None = None
    arena_bytes: int = 0


def _shape_dtype(expr, what):
    from relax_passes._util import tensor_ty

    ty = tensor_ty(expr)
    if ty is None or ty.shape is None:
        raise FirmwareError(f"{what} is not a tensor with a static shape ({expr.ty})",
                            "quantize with a fixed --frames; tuples are not supported on Cortex-M")
    try:
        shape = tuple(int(d) for d in ty.shape)
    except Exception:
        raise FirmwareError(f"{what} has a dynamic shape {ty.shape}", "quantize with a fixed --frames") from None
    return shape, str(ty.dtype)


def _vname(v):
    return str(getattr(v, 'name_hint', None) or getattr(v, 'name', v))


def _nbytes(shape, dtype):
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def plan_graph(lowered) -> Plan:
    """Walk the lowered ``main``: kernel call order, tensors, boundaries, arena plan."""
    import tvm
    from tvm import relax

    from relax_passes._util import bindings

    main = lowered["main"]
    call_tir = tvm.ir.Op.get("relax.call_tir")
    p = Plan()
    env: dict = {}  # relax Var -> TensorRef
    consts: dict = {}

    def new_buf(nbytes, kind, const=None):
        b = Buf(len(p.bufs), nbytes, kind, const=const)
        p.bufs.append(b)
        return b

    def new_ref(buf, shape, dtype):
        r = TensorRef(len(p.tensors), buf, shape, dtype)
        p.tensors.append(r)
        return r

    def ref_of(e, where):
        if isinstance(e, tvm.ir.expr.Constant):
            if e not in consts:
                arr = np.ascontiguousarray(e.value.numpy())
                consts[e] = new_ref(new_buf(arr.nbytes, "const", arr), tuple(arr.shape), str(arr.dtype))
            return consts[e]
        if isinstance(e, relax.Var) and e in env:
            return env[e]
        raise FirmwareError(f"{where}: argument {e} is neither a constant nor a computed tensor",
                            "the Cortex-M target supports plain call_tir graphs only")

    params = list(main.params)
    pending_input = {}
    for prm in params:
        shape, dtype = _shape_dtype(prm, f"input {_vname(prm)}")
        pending_input[prm] = (shape, dtype)
    float_params = set()
    for prm, (shape, dtype) in pending_input.items():
        if np.dtype(dtype).kind == "f":
            float_params.add(prm)  # consumed by the input quantize on the host
        elif _vname(prm) == "length" and dtype == "int32" and len(shape) == 1:  # relax_passes.time_mask
            p.length = env[prm] = new_ref(new_buf(_nbytes(shape, dtype), "length"), shape, dtype)
        else:
            if p.input is not None:
                raise FirmwareError("the model has more than one input", "export a single-input model")
            p.input = env[prm] = new_ref(new_buf(_nbytes(shape, dtype), "input"), shape, dtype)

    step = 0
    out_var = None
    for b in bindings(main):
        v, var = b.value, b.var
        name = _vname(var)
        if isinstance(v, relax.Var):
            if v in float_params:
                float_params.add(var)
                continue
            env[var] = ref_of(v, name)
            continue
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.same_as(call_tir):
            gv = v.args[0]
            pf = lowered[gv]
            args = list(v.args[1].fields)
            if len(v.args) > 2:
                raise FirmwareError(f"{name}: call_tir to {gv.name_hint} with symbolic tir_vars",
                                    "quantize with a fixed --frames")
            role = str(pf.attrs[ROLE]) if pf.attrs is not None and ROLE in pf.attrs else None
            shape, dtype = _shape_dtype(var, name)
            if role == "input_quantize":
                if p.input is not None:
                    raise FirmwareError("more than one model input", "export a single-input model")
                a = pf.attrs
                p.input_quant = {"scale": float(a["zsq.scale"]), "alpha": float(a["zsq.alpha"]),
                                 "bits": int(a["zsq.bits"]), "unsigned": bool(int(a["zsq.unsigned"])),
                                 "dtype": dtype, "shape": list(shape)}
                p.input = env[var] = new_ref(new_buf(_nbytes(shape, dtype), "input"), shape, dtype)
                continue
            if role == "output_dequantize":
                if p.output is not None:
                    raise FirmwareError("more than one output dequantize", "export a single-output model")
                p.output = ref_of(args[0], name)
                p.output_scale = float(pf.attrs["zsq.scale"])
                out_var = var
                continue
            if any(isinstance(x, relax.Var) and x in float_params for x in args):
                raise FirmwareError(f"kernel {gv.name_hint} reads the float input directly",
                                    "quantize the model (zsq quantize) so the input quantize comes first")
            refs = [ref_of(x, name) for x in args]
            out = new_ref(new_buf(_nbytes(shape, dtype), "arena"), shape, dtype)
            out.buf.first = step
            env[var] = out
            for r in refs:
                r.buf.last = max(r.buf.last, step)
            p.calls.append((gv.name_hint, refs + [out]))
            p.prim_funcs[gv.name_hint] = pf
            step += 1
            continue
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in VIEW_OPS:
            src = ref_of(v.args[0], name)
            shape, dtype = _shape_dtype(var, name)
            if _nbytes(shape, dtype) != src.buf.nbytes:
                raise FirmwareError(f"view op {v.op.name} at {name} changes the byte size", "report this model")
            env[var] = new_ref(src.buf, shape, dtype)
            continue
        what = v.op.name if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) else type(v).__name__
        raise FirmwareError(f"the lowered graph has `{what}` at {name}, which the Cortex-M driver cannot execute "
                            "(only call_tir and view ops such as reshape)",
                            "report this model to the zsq-tvm developers, or compile with --target host")
    _check_boundaries(p, main.body.body, env, out_var)
    p.arena_bytes = place_arena([b for b in p.bufs if b.kind == "arena"])
    return p


def _check_boundaries(p: Plan, ret, env: dict, out_var) -> None:
    """One integer input, one output that a kernel writes, the dequantize (if any) last; marks the output."""
    from tvm import relax

    if p.output is None:
        if not isinstance(ret, relax.Var) or ret not in env:
            raise FirmwareError("the model output is not a single tensor", "export a single-output model")
        p.output = env[ret]
    elif out_var is not None and not (isinstance(ret, relax.Var) and ret.same_as(out_var)):
        raise FirmwareError("the output dequantize is not the model's last step", "report this model")
    if p.input is None:
        raise FirmwareError("the model has no integer input", "quantize it first (zsq quantize)")
    if not p.calls:
        raise FirmwareError("the model has no kernels between its boundaries", "report this model")
    if p.output.buf.kind in ("const", "input", "length"):
        raise FirmwareError("the model output is a constant or the input", "report this model")
    p.output.buf.kind = "output"


def place_arena(arena: list) -> int:
    """Offsets of the arena buffers, greedy by size at the lowest offset free over each buffer's lifetime
    (``first`` .. ``last`` kernel step); returns the arena's size in bytes."""
    for b in arena:
        if b.last < b.first:
            b.last = b.first  # written, never read (dead output): still needs space while written
    placed: list[Buf] = []
    for b in sorted(arena, key=lambda b: (-b.nbytes, b.first)):
        size = -(-b.nbytes // ALIGN) * ALIGN
        clashes = sorted((o.offset, o.offset + -(-o.nbytes // ALIGN) * ALIGN) for o in placed
                         if not (o.last < b.first or b.last < o.first))
        off = 0
        for lo, hi in clashes:
            if off + size <= lo:
                break
            off = max(off, hi)
        b.offset = off
        placed.append(b)
    return max([b.offset + -(-b.nbytes // ALIGN) * ALIGN for b in arena] or [ALIGN])


# --------------------------------------------------------------------------- code generation
def compile_kernels(prim_funcs: dict) -> str:
    """TVM `c` codegen of the PrimFuncs (packed ``__tvm_ffi_<name>`` entry points, asserts off)."""
    import tvm

    mod = tvm.IRModule({name: pf.with_attr("global_symbol", name) for name, pf in prim_funcs.items()})
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        lib = tvm.compile(mod, target=tvm.target.Target({"kind": "c"}))
    return lib.mod.inspect_source()


def workspace_bytes(src: str) -> int:
    """Sum of the constant ``TVMBackendAllocWorkspace`` sizes per kernel, maximum over kernels."""
    best = 0
    for body in re.split(r"\n(?=TVM_DLL int32_t __tvm_ffi_|int32_t __tvm_ffi_)", src):
        sizes = re.findall(r"TVMBackendAllocWorkspace\([^,]+,[^,]+,\s*\(uint64_t\)\s*(\d+)", body)
        n_calls = body.count("TVMBackendAllocWorkspace(")
        if n_calls > len(sizes):
            raise FirmwareError("a kernel allocates a workspace of non-constant size",
                                "report this model to the zsq-tvm developers")
        best = max(best, sum(-(-int(s) // ALIGN) * ALIGN for s in sizes))
    return best


_CTYPE = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t", "int32": "int32_t",
          "uint32": "uint32_t", "int64": "int64_t", "uint64": "uint64_t"}


def _dl_dtype(dtype: str) -> str:
    d = np.dtype(dtype)
    code = {"i": 0, "u": 1, "f": 2}[d.kind]
    return f"{{{code}, {d.itemsize * 8}, 1}}"


def _c_bytes(arr: np.ndarray) -> str:
    b = np.frombuffer(arr.tobytes(), np.uint8)
    if b.size == 0:
        return "0"
    lines = [",".join(map(str, b[i:i + 40].tolist())) for i in range(0, b.size, 40)]
    return ",\n".join(lines)


def write_sources(p: Plan, kernels_src: str, out: Path, mcpu: str, board: str, flash: int, ram: int,
                  stack: int, ws: int) -> None:
    import tvm
    import tvm_ffi

    out.mkdir(parents=True, exist_ok=True)
    inc = out / "include"
    ffi_inc = Path(tvm_ffi.__file__).parent / "include"
    tvm_inc = Path(tvm.__file__).parent / "include"
    for src, rel in [(ffi_inc, "dlpack/dlpack.h"), (ffi_inc, "tvm/ffi/c_api.h"), (ffi_inc, "tvm/ffi/extra/c_env_api.h"),
                     (tvm_inc, "tvm/runtime/base.h"), (tvm_inc, "tvm/runtime/c_backend_api.h")]:
        (inc / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, inc / rel)
    (inc / "stub").mkdir(exist_ok=True)
    (inc / "stub" / "math.h").write_text(T.MATH_STUB)
    (out / "kernels.c").write_text(kernels_src)
    in_t, out_t = _CTYPE[p.input.dtype], _CTYPE[p.output.dtype]
    n_in = int(np.prod(p.input.shape)); n_out = int(np.prod(p.output.shape))
    # a --time-mask model also takes the valid frames of each input (int32 [B])
    len_arg = "const int32_t *length, " if p.length is not None else ""
    len_h = (f"/* length: valid (unpadded) frames of each input, 0..{p.input.shape[-1]} */\n"
             f"#define ZSQ_HAS_LENGTH 1\n#define ZSQ_LEN_ELEMS {int(np.prod(p.length.shape))}\n"
             if p.length is not None else "")
    (out / "zsq_config.h").write_text(f"#define ZSQ_WORKSPACE_BYTES {max(ws, ALIGN)}\n")
    (out / "model.h").write_text(
        "#ifndef ZSQ_MODEL_H\n#define ZSQ_MODEL_H\n#include <stdint.h>\n"
        f"/* input: quantized mel {list(p.input.shape)} {p.input.dtype}; output: integer logits "
        f"{list(p.output.shape)} {p.output.dtype} */\n"
        f"typedef {in_t} ZSQ_IN_T;\ntypedef {out_t} ZSQ_OUT_T;\n"
        f"#define ZSQ_IN_ELEMS {n_in}\n#define ZSQ_OUT_ELEMS {n_out}\n#define ZSQ_ARENA_BYTES {p.arena_bytes}\n"
        f"{len_h}/* returns 0, or -(k+1) when kernel k failed */\n"
        f"int zsq_run(const {in_t} *in, {len_arg}{out_t} *out);\n#endif\n")
    # weights
    w = ["/* model weights (generated) */", "#include <stdint.h>"]
    for bf in p.bufs:
        if bf.kind == "const":
            w.append(f"const uint8_t zsq_w{bf.idx}[{max(bf.nbytes, 1)}] __attribute__((aligned({ALIGN}))) = {{\n"
                     f"{_c_bytes(bf.const)}}};")
    (out / "weights.c").write_text("\n".join(w) + "\n")
    # model.c
    m = ["/* generated by zsq-tvm: static driver of the TVM kernels (no malloc) */", "#include <stdint.h>",
         "#include <stddef.h>", '#include "dlpack/dlpack.h"', '#include "tvm/ffi/c_api.h"', '#include "model.h"', ""]
    for bf in p.bufs:
        if bf.kind == "const":
            m.append(f"extern const uint8_t zsq_w{bf.idx}[];")
    m.append(f"static uint8_t zsq_arena[{p.arena_bytes}] __attribute__((aligned({ALIGN})));")
    if p.length is not None:
        m.append(f"static int32_t zsq_len[{int(np.prod(p.length.shape))}];")
    for name in dict.fromkeys(n for n, _ in p.calls):
        m.append(f"int32_t __tvm_ffi_{name}(void *self, void *args, int32_t num_args, void *result);")
    m.append("")
    for t in p.tensors:
        bf = t.buf
        data = {"const": f"(void *)zsq_w{bf.idx}", "arena": f"(void *)(zsq_arena + {bf.offset})",
                "input": "NULL", "output": "NULL", "length": "(void *)zsq_len"}[bf.kind]
        shp = ", ".join(str(d) for d in t.shape) or "1"
        m.append(f"static int64_t zsq_s{t.idx}[] = {{{shp}}};")
        m.append(f"static DLTensor zsq_t{t.idx} = {{{data}, {{kDLCPU, 0}}, {len(t.shape)}, {_dl_dtype(t.dtype)}, "
                 f"zsq_s{t.idx}, NULL, 0}};")
    maxn = max(len(r) for _, r in p.calls)
    m += ["", "typedef int32_t (*zsq_packed_t)(void *, void *, int32_t, void *);",
          f"static int zsq_call(zsq_packed_t f, DLTensor *const *ts, int n) {{",
          f"  TVMFFIAny args[{maxn}], ret;",
          "  for (int i = 0; i < n; i++) {",
          "    args[i].type_index = kTVMFFIDLTensorPtr; args[i].zero_padding = 0; args[i].v_int64 = 0;",
          "    args[i].v_ptr = ts[i];", "  }",
          "  ret.type_index = kTVMFFINone; ret.zero_padding = 0; ret.v_int64 = 0;",
          "  return (int)f(NULL, args, n, &ret);", "}", ""]
    for k, (name, refs) in enumerate(p.calls):
        m.append(f"static DLTensor *const zsq_a{k}[] = {{{', '.join(f'&zsq_t{r.idx}' for r in refs)}}};")
    m += ["", f"int zsq_run(const {in_t} *in, {len_arg}{out_t} *out) {{"]
    if p.length is not None:
        m.append(f"  for (int i = 0; i < {int(np.prod(p.length.shape))}; i++) zsq_len[i] = length[i];")
    for t in p.tensors:
        if t.buf.kind == "input":
            m.append(f"  zsq_t{t.idx}.data = (void *)in;")
        elif t.buf.kind == "output":
            m.append(f"  zsq_t{t.idx}.data = (void *)out;")
    for k, (name, refs) in enumerate(p.calls):
        m.append(f"  if (zsq_call(__tvm_ffi_{name}, zsq_a{k}, {len(refs)}) != 0) return -{k + 1};")
    m += ["  return 0;", "}", ""]
    (out / "model.c").write_text("\n".join(m))
    (out / "support.c").write_text(T.SUPPORT_C)
    (out / "host_support.c").write_text(T.HOST_SUPPORT_C)
    (out / "startup.c").write_text(T.STARTUP_C)
    (out / "driver.c").write_text(T.DRIVER_C)
    (out / "host_main.c").write_text(T.HOST_MAIN_C)
    (out / "link.ld").write_text(T.LINKER_LD.format(board=board, flash=flash, ram=ram, stack=stack))
    (out / "Makefile").write_text(T.MAKEFILE.format(mcpu=mcpu))


# --------------------------------------------------------------------------- build / check / run
_FORBIDDEN = {"malloc", "free", "calloc", "realloc", "_malloc_r", "_free_r", "_calloc_r", "_realloc_r", "_sbrk",
              "_sbrk_r", "sbrk", "printf", "sprintf", "snprintf", "puts"}
_LIBM = {"sqrt", "exp", "log", "log2", "log10", "pow", "floor", "ceil", "fabs", "round", "trunc", "fmod", "tanh",
         "sin", "cos", "tan", "erf", "rint", "lrint", "lround", "nearbyint", "exp2", "expm1", "log1p", "atan",
         "atan2", "asin", "acos", "sinh", "cosh", "cbrt", "hypot", "fmin", "fmax", "ldexp", "frexp", "modf"}


def _is_float_helper(s: str) -> bool:
    if re.match(r"^__aeabi_([fd]|c[fd]|[ul]?[il]2[fd])", s):
        return True
    return bool(re.match(r"^__(add|sub|mul|div|neg|cmp|eq|ne|lt|le|gt|ge|unord|float|fix|fixuns|extend|trunc|pow)"
                         r"\w*(sf|df|tf|xf)\d?\w*$", s))


def check_symbols(path, nm: str = "arm-none-eabi-nm") -> dict:
    """Symbols of an ELF or object (defined and undefined): no soft-float, libm or malloc/stdio."""
    r = subprocess.run([nm, str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise FirmwareError(f"{nm} failed on {path}: {r.stderr.strip()}", "rebuild the firmware")
    syms = {ln.split()[-1] for ln in r.stdout.splitlines() if ln.strip()}
    bad_float = sorted(s for s in syms if _is_float_helper(s))
    libm = sorted(s for s in syms if s in _LIBM or (s.endswith("f") and s[:-1] in _LIBM))
    alloc = sorted(s for s in syms if s in _FORBIDDEN)
    viol = [f"soft-float helper {s}" for s in bad_float] + [f"libm {s}" for s in libm] + \
        [f"heap/stdio {s}" for s in alloc]
    return {"ok": not viol, "path": str(path), "symbols": len(syms), "violations": viol,
            "soft_float": bad_float, "libm": libm, "heap_stdio": alloc}


def elf_sizes(elf) -> dict:
    r = subprocess.run(["arm-none-eabi-size", "-A", "-d", str(elf)], capture_output=True, text=True, check=True)
    sec = {}
    for ln in r.stdout.splitlines():
        parts = ln.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            sec[parts[0]] = int(parts[1])
    flash = sec.get(".text", 0) + sec.get(".ARM.exidx", 0) + sec.get(".data", 0)
    ram = sec.get(".data", 0) + sec.get(".bss", 0) + sec.get(".stack", 0)
    return {"sections": sec, "flash_bytes": flash, "ram_bytes": ram, "bss_bytes": sec.get(".bss", 0),
            "data_bytes": sec.get(".data", 0), "stack_bytes": sec.get(".stack", 0)}


def make(out: Path, target: str = "fw.elf", timeout: int = 600) -> None:
    jobs = str(min(4, os.cpu_count() or 1))
    r = subprocess.run(["make", "-s", f"-j{jobs}", target], cwd=out, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip()
        m = re.search(r"region `(\w+)' overflowed by (\d+) bytes", msg)
        if m:
            raise BudgetError(f"the firmware does not fit: {m.group(1)} overflowed by {m.group(2)} bytes",
                              "raise the budget (flash_kb/ram_kb or ZSQ_CM_FLASH_KB/ZSQ_CM_RAM_KB), "
                              "use a smaller model or fewer --frames")
        raise FirmwareError(f"building {target} failed: {msg[-1500:]}", "check the toolchain installation")


def run_qemu(build_dir, x_int: np.ndarray, board: str, out_shape, out_dtype, timeout: float = 120,
             icount: bool = True, length: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Run ``fw.elf`` on QEMU with ``x_int`` (the quantized input) and, for a ``--time-mask`` model, ``length``
    (int32, one per input); ``(integer output, stats)``."""
    why = qemu_missing()
    if why:
        raise NotAvailableError(f"cannot run the Cortex-M build here: {why}", "install QEMU or run it on a board")
    machine = BOARDS[board][1]
    elf = Path(build_dir).resolve() / "fw.elf"
    with tempfile.TemporaryDirectory(prefix="zsq-qemu-") as td:
        (Path(td) / "input.bin").write_bytes(np.ascontiguousarray(x_int).tobytes())
        if length is not None:
            (Path(td) / "length.bin").write_bytes(np.ascontiguousarray(length, np.int32).tobytes())
        # semihosting is how the firmware reads its input and writes its output (files in td); the seccomp
        # sandbox keeps a firmware's SYS_SYSTEM from spawning host commands
        cmd = ["qemu-system-arm", "-M", machine, "-nographic", "-monitor", "none", "-serial", "none",
               "-sandbox", "on,spawn=deny", "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
        if icount:
            cmd[1:1] = ["-icount", "shift=3"]
        try:
            r = subprocess.run(["timeout", str(int(timeout))] + cmd, cwd=td, capture_output=True, timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            r = None
        if r is None or r.returncode == 124:
            raise FirmwareError(f"the firmware did not finish within {timeout:.0f} s under QEMU",
                                "check the build (zsq check) or raise the timeout")
        if r.returncode != 0:
            raise FirmwareError(f"the firmware exited with status {r.returncode} under QEMU "
                                f"({r.stderr.decode(errors='replace').strip()[-300:]})",
                                "90/91: fault; 10-14: semihosting file I/O; 20: a kernel failed")
        y = np.frombuffer((Path(td) / "output.bin").read_bytes(), dtype=out_dtype).reshape(out_shape).copy()
        st = np.frombuffer((Path(td) / "stats.bin").read_bytes(), dtype=np.uint32)
    ticks = int(st[1]) | (int(st[2]) << 32)
    stats = {"rc": int(st[0]), "systick_ticks": ticks, "stack_used_bytes": int(st[3])}
    if icount:  # SysTick at 25 MHz, one instruction = 2^3 ns: instructions = ticks * 40 / 8
        stats["instructions"] = ticks * 40 // 8
    return y, stats


def run_host(build_dir, x_int: np.ndarray, out_shape, out_dtype, length: np.ndarray | None = None) -> np.ndarray:
    """The same generated C compiled for this machine (``make host_run``), for the bit-exact cross-check."""
    b = Path(build_dir)
    if not (b / "host_run").exists():
        make(b, "host_run")
    with tempfile.TemporaryDirectory(prefix="zsq-host-") as td:
        i, o = Path(td) / "in.bin", Path(td) / "out.bin"
        i.write_bytes(np.ascontiguousarray(x_int).tobytes())
        extra = []
        if length is not None:
            (Path(td) / "len.bin").write_bytes(np.ascontiguousarray(length, np.int32).tobytes())
            extra = [str(Path(td) / "len.bin")]
        subprocess.run([str((b / "host_run").resolve()), str(i), str(o)] + extra, check=True, timeout=120)
        return np.frombuffer(o.read_bytes(), dtype=out_dtype).reshape(out_shape).copy()


def quantize_input(x: np.ndarray, iq: dict) -> np.ndarray:
    q = intmath.quantize(x, iq["scale"], iq["alpha"], iq["bits"], iq["unsigned"])
    return np.ascontiguousarray(q, dtype=iq["dtype"])


def generate(mod, out: Path, board: str = "cortex-m4", flash: int | None = None, ram: int | None = None,
             stack: int = DEFAULT_STACK, build_elf: bool = True) -> dict:
    """Quantized (not lowered) module → firmware folder ``out``; returns the firmware record."""
    from relax_passes.lowering import lower

    if board not in BOARDS:
        raise TargetError(f"unknown Cortex-M board {board!r}", "use one of: " + ", ".join(BOARDS))
    mcpu, machine, dflash, dram = BOARDS[board]
    flash = int(flash or dflash)
    ram = int(ram or dram)
    if not (0 < flash <= QEMU_MAX and 0 < ram <= QEMU_MAX):
        raise ConfigError(f"flash {flash} B / RAM {ram} B outside the emulated board's 4 MiB each",
                          "pass budgets up to 4096 KB")
    from relax_passes.tir_inline import InlineOnceRead

    # each fused elementwise chain as one loop nest: its per-op intermediates would each take workspace RAM
    lowered = InlineOnceRead()(lower(mod))
    p = plan_graph(lowered)
    src = compile_kernels(p.prim_funcs)
    ws = workspace_bytes(src)
    weights = sum(b.nbytes for b in p.bufs if b.kind == "const")
    io_bytes = p.input.buf.nbytes + p.output.buf.nbytes  # the driver's static in/out buffers
    io_bytes += 2 * p.length.buf.nbytes if p.length is not None else 0  # the driver's and the model's copy
    ram_need = p.arena_bytes + ws + stack + io_bytes
    if weights > flash or ram_need > ram:
        raise BudgetError(
            f"the model does not fit {board} with {flash // 1024} KB flash / {ram // 1024} KB RAM: weights "
            f"{weights} B (flash {'over' if weights > flash else 'ok'}); RAM needs arena {p.arena_bytes} + "
            f"workspace {ws} + stack {stack} + in/out {io_bytes} = {ram_need} B "
            f"({'over' if ram_need > ram else 'ok'})",
            "raise the budget (ZSQ_CM_FLASH_KB / ZSQ_CM_RAM_KB in KB, or zsq_tvm.backends.cortexm.compile_firmware(q, target, flash_kb=, ram_kb=)), "
            "use a smaller model, or quantize with fewer --frames")
    write_sources(p, src, out, mcpu, board, flash, ram, stack, ws)
    rec = {"board": board, "mcpu": mcpu, "qemu_machine": machine, "flash_budget": flash, "ram_budget": ram,
           "stack_budget": stack, "arena_bytes": p.arena_bytes, "workspace_bytes": ws, "weights_bytes": weights,
           "kernels": len(p.prim_funcs), "calls": len(p.calls),
           "input": {"shape": list(p.input.shape), "dtype": p.input.dtype, "quantize": p.input_quant},
           "length": None if p.length is None else {"shape": list(p.length.shape), "dtype": "int32"},
           "output": {"shape": list(p.output.shape), "dtype": p.output.dtype, "scale": p.output_scale},
           "arena_naive_bytes": sum(-(-b.nbytes // ALIGN) * ALIGN for b in p.bufs if b.kind == "arena")}
    if build_elf:
        why = toolchain_missing()
        if why:
            raise NotAvailableError(f"cannot build the Cortex-M firmware: {why}",
                                    "install the toolchain; the C sources are complete without it")
        make(out)
        rec["size"] = elf_sizes(out / "fw.elf")
        rec["symbols"] = check_symbols(out / "fw.elf")
    return rec
