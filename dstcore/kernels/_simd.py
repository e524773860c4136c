"""Explicit SIMD for Numba kernels (LLVM vector IR through ``numba.extending.intrinsic``).

Relying on LLVM's auto-vectoriser for accumulator blocks kept in registers turned out to be
fragile (signed-index wraparound checks became gathers, conditional updates kept stores in the
hot loop, non power-of-two widths were scalarised). These intrinsics make the vector code
explicit but stay target independent: ``F32Vec(n)`` is ``n`` float32 lanes held as an LLVM
array of ``<16 x float>`` (one zmm register with AVX-512, two ymm with AVX2), and the
operations use generic LLVM intrinsics (``llvm.fmuladd``, ``llvm.masked.store``), so the same
source compiles for any x86-64 or ARM host.

Compile-time sizes (kernel taps, output-channel block) travel in the *type* of a
:class:`KSpec` argument so that one cached Numba function serves every layer shape:
``KSpec(taps, block)`` has Numba type ``KSpecType(taps, block)``.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import (
    NativeValue,
    intrinsic,
    models,
    register_model,
    unbox,
)
from numba.core.imputils import lower_constant

LANES = 16
_V16 = ir.VectorType(ir.FloatType(), LANES)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


class F32Vec(types.Type):
    """``n`` float32 lanes (``n`` a multiple of 16) living in vector registers."""

    def __init__(self, n: int) -> None:
        if n % LANES:
            raise ValueError(f"F32Vec width must be a multiple of {LANES}, got {n}")
        self.n = n
        super().__init__(name=f"F32Vec({n})")


@register_model(F32Vec)
class _F32VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_V16, fe_type.n // LANES))


class KSpecType(types.Type):
    """Numba type carrying compile-time ints: kernel taps, output-channel block and (direct
    conv tiles) the input step between a tile's pixels, 0 when it is a runtime value."""

    def __init__(self, taps: int, block: int, step: int = 0) -> None:
        self.taps = taps
        self.block = block
        self.step = step
        super().__init__(name=f"KSpec({taps},{block},{step})")


class KSpec:
    """Compile-time constants for a kernel: ``taps`` (kernel width S, or pixels of a direct
    conv tile), ``block`` lanes and optionally ``step`` (floats between a tile's pixels)."""

    __slots__ = ("taps", "block", "step", "_numba_type_")

    def __init__(self, taps: int, block: int, step: int = 0) -> None:
        if block % LANES or block <= 0 or taps <= 0 or step < 0:
            raise ValueError(f"bad KSpec({taps}, {block}, {step})")
        self.taps = int(taps)
        self.block = int(block)
        self.step = int(step)
        # fast typeof in the dispatcher
        self._numba_type_ = KSpecType(self.taps, self.block, self.step)

    def __repr__(self) -> str:
        return f"KSpec(taps={self.taps}, block={self.block}, step={self.step})"


register_model(KSpecType)(models.OpaqueModel)


@unbox(KSpecType)
def _unbox_kspec(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())


@lower_constant(KSpecType)
def _kspec_constant(context, builder, ty, pyval):
    """A KSpec used as a global of jitted code (its sizes are in the type; no data)."""
    return context.get_dummy_value()


# ----------------------------------------------------------------------------- helpers


def _ptr(context, builder, arrty, arr, off):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [off])


def _load16(builder, p, i):
    q = builder.gep(p, [ir.Constant(_I64, LANES * i)])
    return builder.load(builder.bitcast(q, _V16.as_pointer()), align=4)


def _store16(builder, v, p, i):
    q = builder.gep(p, [ir.Constant(_I64, LANES * i)])
    builder.store(v, builder.bitcast(q, _V16.as_pointer()), align=4)


def _splat(builder, s):
    """16 copies of the scalar LLVM value s (float, i32, i1, ...) as a <16 x type(s)>."""
    vt = ir.VectorType(s.type, LANES)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _fmuladd(builder):
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.fmuladd.v16f32")


def _lane_mask(builder, count, first_lane):
    """<16 x i1>: lane l is on iff first_lane + l < count."""
    lanes = ir.Constant(ir.VectorType(_I32, LANES), list(range(first_lane, first_lane + LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, builder.trunc(count, _I32)))


def _masked_store16(builder, v, p, i, mask):
    fnty = ir.FunctionType(ir.VoidType(), [_V16, _V16.as_pointer(), _I32,
                                           ir.VectorType(ir.IntType(1), LANES)])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16f32.p0")
    q = builder.bitcast(builder.gep(p, [ir.Constant(_I64, LANES * i)]), _V16.as_pointer())
    builder.call(fn, [v, q, ir.Constant(_I32, 4), mask])


def _vec_const_zero(n):
    return ir.Constant(ir.ArrayType(_V16, n // LANES), None)


def _is_f32_array(a):
    return isinstance(a, types.Array) and a.dtype == types.float32


# ----------------------------------------------------------------------------- spec queries


@intrinsic
def spec_taps(typingctx, spec):
    """Compile-time kernel taps S of a KSpec, as an intp."""
    if not isinstance(spec, KSpecType):
        return None
    taps = spec.taps

    def codegen(context, builder, sig, args):
        return ir.Constant(_I64, taps)
    return types.intp(spec), codegen


@intrinsic
def spec_block(typingctx, spec):
    """Compile-time output-channel block (lanes) of a KSpec, as an intp."""
    if not isinstance(spec, KSpecType):
        return None
    block = spec.block

    def codegen(context, builder, sig, args):
        return ir.Constant(_I64, block)
    return types.intp(spec), codegen


@intrinsic
def stack_buffer(typingctx, spec):
    """Pointer to an uninitialised, 64-byte aligned float32 stack buffer of taps*block."""
    if not isinstance(spec, KSpecType):
        return None
    n = spec.taps * spec.block

    def codegen(context, builder, sig, args):
        p = cgutils.alloca_once(builder, ir.FloatType(), size=ir.Constant(_I64, n))
        p.align = 64
        return p
    return types.CPointer(types.float32)(spec), codegen


# ----------------------------------------------------------------------------- vectors


@intrinsic
def vzeros_taps(typingctx, spec):
    """Zero vector of taps*block lanes."""
    if not isinstance(spec, KSpecType):
        return None
    vt = F32Vec(spec.taps * spec.block)

    def codegen(context, builder, sig, args):
        return _vec_const_zero(vt.n)
    return vt(spec), codegen


@intrinsic
def vload_block(typingctx, spec, arr, off):
    """arr[off:off+block] as a vector (unaligned load)."""
    if not isinstance(spec, KSpecType) or not _is_f32_array(arr):
        return None
    vt = F32Vec(spec.block)

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[1], args[1], args[2])
        out = _vec_const_zero(vt.n)
        for i in range(vt.n // LANES):
            out = builder.insert_value(out, _load16(builder, p, i), i)
        return out
    return vt(spec, arr, types.intp), codegen


@intrinsic
def vsplat_block(typingctx, spec, s):
    """``block`` copies of the scalar s."""
    if not isinstance(spec, KSpecType):
        return None
    vt = F32Vec(spec.block)

    def codegen(context, builder, sig, args):
        sv = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32))
        out = _vec_const_zero(vt.n)
        for i in range(vt.n // LANES):
            out = builder.insert_value(out, sv, i)
        return out
    return vt(spec, types.float32), codegen


@intrinsic
def vload_like(typingctx, like, arr, off):
    """arr[off:off+n] with n the width of ``like``."""
    if not isinstance(like, F32Vec) or not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        n = sig.args[0].n
        p = _ptr(context, builder, sig.args[1], args[1], args[2])
        out = _vec_const_zero(n)
        for i in range(n // LANES):
            out = builder.insert_value(out, _load16(builder, p, i), i)
        return out
    return like(like, arr, types.intp), codegen


@intrinsic
def vstore(typingctx, arr, off, vec):
    """arr[off:off+n] = vec."""
    if not isinstance(vec, F32Vec) or not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        for i in range(sig.args[2].n // LANES):
            _store16(builder, builder.extract_value(args[2], i), p, i)
        return context.get_dummy_value()
    return types.none(arr, types.intp, vec), codegen


@intrinsic
def vstoren(typingctx, arr, off, vec, count):
    """arr[off:off+count] = vec[:count] (masked store; lanes >= count untouched)."""
    if not isinstance(vec, F32Vec) or not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        for i in range(sig.args[2].n // LANES):
            _masked_store16(builder, builder.extract_value(args[2], i), p, i,
                            _lane_mask(builder, args[3], LANES * i))
        return context.get_dummy_value()
    return types.none(arr, types.intp, vec, types.intp), codegen


@intrinsic
def vfma(typingctx, acc, s, arr, off):
    """acc + s * arr[off:off+n] (fused where the target has FMA)."""
    if not isinstance(acc, F32Vec) or not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[2], args[2], args[3])
        sv = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32))
        fn = _fmuladd(builder)
        out = args[0]
        for i in range(sig.args[0].n // LANES):
            r = builder.call(fn, [sv, _load16(builder, p, i), builder.extract_value(out, i)])
            out = builder.insert_value(out, r, i)
        return out
    return acc(acc, types.float32, arr, types.intp), codegen


@intrinsic
def vadd(typingctx, a, b):
    """Lane-wise a + b."""
    if not isinstance(a, F32Vec) or a != b:
        return None

    def codegen(context, builder, sig, args):
        out = args[0]
        for i in range(sig.args[0].n // LANES):
            s = builder.fadd(builder.extract_value(args[0], i), builder.extract_value(args[1], i))
            out = builder.insert_value(out, s, i)
        return out
    return a(a, b), codegen


@intrinsic
def vaddto_taps(typingctx, spec, arr, off, step, acc):
    """For s < taps: arr[off + s*step : +block] += acc[s*block : (s+1)*block]."""
    if not isinstance(spec, KSpecType) or not isinstance(acc, F32Vec) or not _is_f32_array(arr):
        return None
    if acc.n != spec.taps * spec.block:
        return None
    taps, nb = spec.taps, spec.block // LANES

    def codegen(context, builder, sig, args):
        base = _ptr(context, builder, sig.args[1], args[1], args[2])
        for s in range(taps):
            p = builder.gep(base, [builder.mul(args[3], ir.Constant(_I64, s))])
            for i in range(nb):
                v = builder.fadd(_load16(builder, p, i), builder.extract_value(args[4], s * nb + i))
                _store16(builder, v, p, i)
        return context.get_dummy_value()
    return types.none(spec, arr, types.intp, types.intp, acc), codegen


@intrinsic
def vfma16_mem(typingctx, dst, doff, s, src, soff):
    """dst[doff:doff+16] += s * src[soff:soff+16] (both in memory)."""
    if not _is_f32_array(dst) or not _is_f32_array(src):
        return None

    def codegen(context, builder, sig, args):
        pd = _ptr(context, builder, sig.args[0], args[0], args[1])
        ps = _ptr(context, builder, sig.args[3], args[3], args[4])
        sv = _splat(builder, context.cast(builder, args[2], sig.args[2], types.float32))
        r = builder.call(_fmuladd(builder), [sv, _load16(builder, ps, 0), _load16(builder, pd, 0)])
        _store16(builder, r, pd, 0)
        return context.get_dummy_value()
    return types.none(dst, types.intp, types.float32, src, types.intp), codegen


def _masked_load16(builder, p, mask):
    """<16 x float> at p, lanes off in ``mask`` read as zero (and never touched)."""
    fnty = ir.FunctionType(_V16, [_V16.as_pointer(), _I32, ir.VectorType(ir.IntType(1), LANES),
                                  _V16])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v16f32.p0")
    return builder.call(fn, [builder.bitcast(p, _V16.as_pointer()), ir.Constant(_I32, 4), mask,
                             ir.Constant(_V16, None)])


_VEC16 = F32Vec(LANES)


@intrinsic
def vfill16(typingctx, s):
    """16 copies of the scalar s."""
    if not isinstance(s, types.Float | types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = _splat(builder, context.cast(builder, args[0], sig.args[0], types.float32))
        return builder.insert_value(_vec_const_zero(LANES), v, 0)
    return _VEC16(s), codegen


@intrinsic
def vloadn16(typingctx, arr, off, count):
    """arr[off:off+count] in the first ``count`` (<= 16) lanes, zeros after (masked load: it
    never reads past count)."""
    if not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        v = _masked_load16(builder, p, _lane_mask(builder, args[2], 0))
        return builder.insert_value(_vec_const_zero(LANES), v, 0)
    return _VEC16(arr, types.intp, types.intp), codegen


@intrinsic
def vpool16(typingctx, acc, x, is_max):
    """max(acc, x) lane-wise, a NaN in either propagating as in torch, if is_max; else
    acc + x."""
    if acc != _VEC16 or x != _VEC16 or not isinstance(is_max, types.Boolean):
        return None

    def codegen(context, builder, sig, args):
        d, v = builder.extract_value(args[0], 0), builder.extract_value(args[1], 0)
        t = builder.select(builder.fcmp_unordered(">", v, d), v, d)
        mx = builder.select(builder.fcmp_unordered("uno", d, d), d, t)
        r = builder.select(args[2], mx, builder.fadd(d, v))
        return builder.insert_value(_vec_const_zero(LANES), r, 0)
    return _VEC16(acc, x, is_max), codegen


@intrinsic
def vscale16(typingctx, acc, s):
    """acc * s lane-wise."""
    if acc != _VEC16 or not isinstance(s, types.Float):
        return None

    def codegen(context, builder, sig, args):
        sv = _splat(builder, context.cast(builder, args[1], sig.args[1], types.float32))
        r = builder.fmul(builder.extract_value(args[0], 0), sv)
        return builder.insert_value(_vec_const_zero(LANES), r, 0)
    return _VEC16(acc, s), codegen


@intrinsic
def nzmask16(typingctx, arr, off):
    """Bit l of the result is set iff arr[off + l] != 0 (NaN counts as non-zero), l < 16."""
    if not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        vec = _load16(builder, p, 0)
        cmp = builder.fcmp_unordered("!=", vec, ir.Constant(_V16, None))
        return builder.zext(builder.bitcast(cmp, ir.IntType(LANES)), _I64)
    return types.uint64(arr, types.intp), codegen


@intrinsic
def nzmask64(typingctx, arr, off):
    """Bit l of the result is set iff arr[off + l] != 0 (NaN counts as non-zero), l < 64."""
    if not _is_f32_array(arr):
        return None

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1])
        v64 = ir.VectorType(ir.FloatType(), 64)
        vec = builder.load(builder.bitcast(p, v64.as_pointer()), align=4)
        cmp = builder.fcmp_unordered("!=", vec, ir.Constant(v64, None))
        return builder.bitcast(cmp, _I64)
    return types.uint64(arr, types.intp), codegen


# ----------------------------------------------------------------------------- output tiles
# A tile is ``taps`` output pixels x ``block`` output channels held in registers
# (F32Vec(taps * block)); the direct convolution accumulates one per call of vfma_taps.


@intrinsic
def vinit_taps(typingctx, spec, arr, off):
    """``taps`` copies of arr[off:off+block] (a tile initialised to the bias)."""
    if not isinstance(spec, KSpecType) or not _is_f32_array(arr):
        return None
    vt = F32Vec(spec.taps * spec.block)
    nb = spec.block // LANES

    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[1], args[1], args[2])
        vecs = [_load16(builder, p, i) for i in range(nb)]
        out = _vec_const_zero(vt.n)
        for i in range(vt.n // LANES):
            out = builder.insert_value(out, vecs[i % nb], i)
        return out
    return vt(spec, arr, types.intp), codegen


@intrinsic
def vfma_taps(typingctx, spec, acc, x, xoff, xstep, w, woff):
    """For t < taps: acc[t] += x[xoff + t*xstep] * w[woff:woff+block] (the weight vector is
    loaded once and used ``taps`` times); xstep is the spec's step when that is not 0."""
    if (not isinstance(spec, KSpecType) or not isinstance(acc, F32Vec) or not _is_f32_array(x)
            or not _is_f32_array(w) or acc.n != spec.taps * spec.block):
        return None
    taps, nb, step = spec.taps, spec.block // LANES, spec.step

    def codegen(context, builder, sig, args):
        px = _ptr(context, builder, sig.args[2], args[2], args[3])
        pw = _ptr(context, builder, sig.args[5], args[5], args[6])
        wv = [_load16(builder, pw, i) for i in range(nb)]
        fn = _fmuladd(builder)
        out = args[1]
        for t in range(taps):
            # a compile-time step keeps every pixel's address base + constant (no registers)
            off = ir.Constant(_I64, step * t) if step else builder.mul(args[4], ir.Constant(_I64, t))
            xs = builder.load(builder.gep(px, [off]))
            sv = _splat(builder, xs)
            for i in range(nb):
                r = builder.call(fn, [sv, wv[i], builder.extract_value(out, t * nb + i)])
                out = builder.insert_value(out, r, t * nb + i)
        return out
    return acc(spec, acc, x, types.intp, types.intp, w, types.intp), codegen


@intrinsic
def vstoren_taps(typingctx, spec, arr, off, step, acc, count, relu):
    """For t < taps: arr[off + t*step : +count] = acc[t][:count] (masked; count <= block),
    through max(., 0) if relu."""
    if (not isinstance(spec, KSpecType) or not isinstance(acc, F32Vec)
            or not _is_f32_array(arr) or acc.n != spec.taps * spec.block
            or not isinstance(relu, types.Boolean)):
        return None
    taps, nb = spec.taps, spec.block // LANES

    def codegen(context, builder, sig, args):
        base = _ptr(context, builder, sig.args[1], args[1], args[2])
        masks = [_lane_mask(builder, args[5], LANES * i) for i in range(nb)]
        zero = ir.Constant(_V16, None)
        relu = builder.icmp_unsigned("!=", args[6], ir.Constant(args[6].type, 0))
        relu = _splat(builder, relu)
        for t in range(taps):
            p = builder.gep(base, [builder.mul(args[3], ir.Constant(_I64, t))])
            for i in range(nb):
                v = builder.extract_value(args[4], t * nb + i)
                # max(v, 0) that keeps NaN, like torch's relu: v > 0 or v != v ? v : 0
                keep = builder.fcmp_unordered(">", v, zero)
                v = builder.select(builder.and_(relu, builder.not_(keep)), zero, v)
                _masked_store16(builder, v, p, i, masks[i])
        return context.get_dummy_value()
    return types.none(spec, arr, types.intp, types.intp, acc, types.intp, relu), codegen
