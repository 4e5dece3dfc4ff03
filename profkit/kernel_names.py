"""Normalised kernel keys: the same work under another vendor's or library's kernel name.

`normalize(name, kind)` turns a device activity name into a short key,
`<category>:<what it does>`, that survives a change of GPU generation, vendor or library
version:

- GEMMs lose the library, architecture and tile configuration and keep the input type:
  `ampere_sgemm_128x64_nn`, `volta_sgemm_128x64_nn` and
  `cutlass_80_tensorop_s1688gemm_64x64_32x4_nn_align1` are all `gemm:f32`;
  cuBLAS `sm90_xmma_gemm_bf16bf16_...` and hipBLASLt/Tensile `Cijk_Alik_Bljk_B_BS_...`
  are both `gemm:bf16`. Convolutions keep their pass (`gemm:conv_fprop`).
- PyTorch's generic launchers (`vectorized_elementwise_kernel`, `elementwise_kernel`,
  `elementwise_kernel_manual_unroll`, `reduce_kernel`, ...) are keyed by the functor they
  run: `vectorized_elementwise_kernel<4, CUDAFunctor_add<float>>` is `elementwise:add`,
  `reduce_kernel<..., MeanOps<...>>` is `reduction:mean`.
- Attention kernels by direction: FlashAttention's `flash_fwd_kernel`, AMD's aotriton
  `attn_fwd` and CK `fmha_fwd` are all `attention:fwd` (`bwd`, `fwd_decode`,
  `fwd_combine` likewise).
- NCCL/RCCL kernels by collective (`communication:all_reduce`); copies by direction
  (`memory:memcpy_htod`), fills as `memory:memset`.
- Anything else: its own name without template arguments, parameters, namespaces,
  tile-configuration and numeric suffixes, in snake case (`other:permute_pooled_embs`).

The category comes from the shared classifier (`profkit.classify`), never from here.
"""
from __future__ import annotations

import re
from functools import lru_cache

from . import classify

# PyTorch's generic launch templates: the work is named by the functor in their arguments.
GENERIC_LAUNCHERS = frozenset({
    "elementwise_kernel", "vectorized_elementwise_kernel", "unrolled_elementwise_kernel",
    "elementwise_kernel_manual_unroll", "vectorized_templated_elementwise_kernel",
    "elementwise_kernel_with_index", "reduce_kernel", "multi_tensor_apply_kernel",
    "index_elementwise_kernel",
})
# Functor templates that only wrap the functor that matters (BinaryFunctor<.., MulFunctor>).
WRAPPER_FUNCTORS = frozenset({"", "Binary", "AUnary", "BUnary", "Unary", "Opaque"})
# Prefixes of `<x>_kernel...` tokens that name the launcher, not the work.
LAUNCHER_WORDS = frozenset({"gpu", "elementwise", "vectorized_elementwise", "launch",
                            "unrolled_elementwise", "reduce", "vectorized"})

# Tensile/hipBLASLt type letters (first letter of the token after the index assignment).
TENSILE_TYPES = {"S": "f32", "D": "f64", "H": "f16", "B": "bf16", "C": "c32", "Z": "c64",
                 "I": "i8", "F": "f8"}
# Explicit type words in cuBLAS/CUTLASS/cuDNN names, most specific first.
GEMM_TYPE_WORDS = (
    (re.compile(r"e4m3|e5m2|fp8|f8(?![0-9])", re.I), "f8"),
    (re.compile(r"bf16|bfloat16", re.I), "bf16"),
    (re.compile(r"fp16|f16(?!\d)|half", re.I), "f16"),
    (re.compile(r"tf32", re.I), "f32"),
    (re.compile(r"fp32|f32(?!\d)", re.I), "f32"),
    (re.compile(r"fp64|f64(?!\d)", re.I), "f64"),
    (re.compile(r"int8|i8(?!\d)|imma", re.I), "i8"),
)
# Legacy cuBLAS / CUTLASS: `ampere_sgemm_`, `volta_h884gemm_`, `s1688gemm`: the letter
# before the optional MMA shape gives the precision.
BLAS_LETTER = re.compile(r"(?:^|_)([sdhcz])(?:\d{3,6})?gemm", re.I)
BLAS_LETTER_TYPES = {"s": "f32", "d": "f64", "h": "f16", "c": "c32", "z": "c64"}

C_TYPES = re.compile(r"\b(float|double|c10::Half|__half|half|c10::BFloat16|__nv_bfloat16|"
                     r"__hip_bfloat16|c10::Float8_e4m3fn|__nv_fp8_e4m3)\b")
C_TYPE_NAMES = {"float": "f32", "double": "f64", "c10::Half": "f16", "__half": "f16", "half": "f16",
                "c10::BFloat16": "bf16", "__nv_bfloat16": "bf16", "__hip_bfloat16": "bf16",
                "c10::Float8_e4m3fn": "f8", "__nv_fp8_e4m3": "f8"}
_TILE_SUFFIX = re.compile(r"_\d+x\d+.*$")
_TRAILING_NUMBER = re.compile(r"(_v?\d+)+$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_MEMCPY_DIRECTION = re.compile(r"\b(HtoD|DtoH|DtoD|HtoH|PtoP|HtoA|AtoH|DtoA|AtoD|AtoA)\b", re.I)


def snake(text: str) -> str:
    return _CAMEL.sub("_", text).lower().strip("_")


def demangle_last(name: str) -> str | None:
    """The innermost identifier of an Itanium-mangled name (`_ZN5aiter9fooIf...` -> `foo`).

    Enough to name the kernel; a full demangler is not needed for a key.
    """
    if not name.startswith("_Z"):
        return None
    i = 3 if name.startswith("_ZN") else 2
    last = None
    while i < len(name) and name[i].isdigit():
        j = i
        while j < len(name) and name[j].isdigit():
            j += 1
        length = int(name[i:j])
        last = name[j:j + length]
        i = j + length
    return last


# Own names that say nothing (`cutlass::Kernel<...>`, `internal::gemvx::kernel<...>`,
# `epilogue::impl::globalKernel<...>`): the enclosing namespace names the work instead.
GENERIC_OWN = frozenset({"kernel", "kernel2", "globalkernel", "device_kernel", "entry", "kentry"})
HOLLOW_NAMESPACES = frozenset({"impl", "detail", "internal", "native", "at", "void", ""})


def own_name(name: str) -> str:
    """The kernel's own identifier: no `void`, namespaces, template arguments, parameters."""
    mangled = demangle_last(name.strip())
    if mangled:
        return mangled
    base = classify.base_name(name).strip()
    base = base.split()[-1] if base.split() else base
    parts = base.split("::")
    own = parts[-1]
    if own.lower() in GENERIC_OWN:
        outer = [p for p in parts[:-1] if p.lower() not in HOLLOW_NAMESPACES]
        if outer:
            return f"{outer[-1]}_{own}" if own.lower() == "globalkernel" else outer[-1]
    return own


def template_args(name: str) -> str:
    """Everything from the first `<` on (template arguments and parameters)."""
    cut = name.find("<")
    return name[cut:] if cut >= 0 else ""


def functor(args: str) -> str | None:
    """The operation a generic PyTorch launcher runs, from its template arguments."""
    for token in _IDENT.findall(args):
        m = re.fullmatch(r"(\w*?)Functor(?:OnSelf|OnOther)?(?:_(\w+))?", token)
        if m:
            if m.group(2):
                return m.group(2).lower()          # CUDAFunctor_add -> add
            if m.group(1) in WRAPPER_FUNCTORS or m.group(1) == "CUDA":
                continue
            return snake(re.sub(r"^Compare", "", m.group(1)))   # CompareEqFunctor -> eq
        m = re.fullmatch(r"(\w+?)Ops", token)
        if m and m.group(1) not in ("Reduce", "Welford"):
            return snake(m.group(1))               # MeanOps -> mean, ArgMaxOps -> arg_max
        if token == "WelfordOps":
            return "welford"
        m = re.fullmatch(r"(\w+?)_(?:kernel|functor)(?:_cuda|_impl|_cuda_impl)?", token)
        if m and m.group(1) not in LAUNCHER_WORDS:
            return re.sub(r"^gpu_", "", m.group(1))  # direct_copy_kernel_cuda -> direct_copy
        m = re.fullmatch(r"(\w+?)(?:CUDA)?KernelImpl", token)
        if m:
            return snake(m.group(1))               # GeluCUDAKernelImpl -> gelu
        m = re.fullmatch(r"launch_(\w+)", token)
        if m:
            return m.group(1)                      # launch_clamp_scalar -> clamp_scalar
        m = re.fullmatch(r"(\w+)_cuda_out", token)
        if m:
            return m.group(1)                      # arange_cuda_out -> arange
    return None


def gemm_dtype(name: str) -> str | None:
    """Input element type of a GEMM kernel where its name says."""
    own = own_name(name)
    tensile = re.match(r"Cijk_[A-Za-z]+_[A-Za-z]+_([A-Z][A-Za-z0-9]*)", own)
    if tensile:
        return TENSILE_TYPES.get(tensile.group(1)[0])
    # A wrapper's own name (cutlass::Kernel2<...>, ck_tile::kentry<...>) says nothing: read
    # the whole name, where the wrapped kernel's name or its types are.
    text = name if _wrapped(name) else own
    for pattern, dtype in GEMM_TYPE_WORDS:
        if pattern.search(text):
            return dtype
    # CUTLASS wraps the real name in template arguments: cutlass::Kernel<cutlass_80_..._s1688gemm_..>.
    for candidate in (own, name):
        m = BLAS_LETTER.search(candidate)
        if m:
            return BLAS_LETTER_TYPES[m.group(1).lower()]
    # cuBLAS gemv/gemmk1 kernels: the first C type among the template arguments.
    m = C_TYPES.search(template_args(name))
    return C_TYPE_NAMES[m.group(1)] if m else None


def _wrapped(name: str) -> bool:
    base = classify.base_name(name).strip()
    return base.rsplit("::", 1)[-1].lower() in GENERIC_OWN


def _is_library_gemm(name: str) -> bool:
    own = name if _wrapped(name) else own_name(name)   # cutlass::Kernel<cutlass_...gemm>
    return bool(re.search(r"gemm|gemv|Cijk_|nvjet|xmma|wgmma|cutlass|cublas|hipblaslt|"
                          r"matmul|^bmm_|scudnn", own, re.I))


def _conv_pass(name: str) -> str | None:
    for word, key in (("wgrad", "conv_wgrad"), ("dgrad", "conv_dgrad"), ("fprop", "conv_fprop"),
                      ("implicit_convolve", "conv_fprop"), ("scudnn", "conv_fprop"),
                      ("winograd", "conv_winograd"), ("ImplicitGemmConvolution", "conv")):
        if word.lower() in name.lower():
            return key
    return None


def _attention_variant(name: str) -> str:
    low = name.lower()
    if re.search(r"bwd|backward|dgrad|cutlassb", low):
        return "bwd"
    if re.search(r"combine|reduce_kernel|_reduce\b", low):
        return "fwd_combine"
    if re.search(r"paged|splitkv|decode|ll4mi", low):
        return "fwd_decode"
    return "fwd"


def _plain(own: str) -> str:
    text = _TILE_SUFFIX.sub("", own)
    text = re.sub(r"_?[Kk]ernel(_[A-Za-z0-9]+)*$", "", text) or text
    text = _TRAILING_NUMBER.sub("", text) or text
    return snake(text) or "unnamed"


@lru_cache(maxsize=65536)
def normalize(name: str | None, kind: str = "kernel") -> str:
    """The normalised key of a device activity (see the module doc)."""
    name = name or ""
    if kind == "memset":
        return "memory:memset"
    if kind == "memcpy":
        m = _MEMCPY_DIRECTION.search(name)
        return f"memory:memcpy_{m.group(1).lower()}" if m else "memory:memcpy"
    category = classify.category("kernel", name) or classify.DEFAULT_CATEGORY
    own = own_name(name)
    if category == "communication":
        return f"communication:{classify.collective_op(name)}"
    if category == "memory":
        if re.match(r"memcpy|memset", own, re.I):
            return normalize(name, "memset" if own.lower().startswith("memset") else "memcpy")
        return f"memory:{_plain(re.sub(r'^__amd_rocclr_', '', own))}"
    if category == "attention":
        return f"attention:{_attention_variant(name if own.lower() in GENERIC_OWN else own)}"
    if own in GENERIC_LAUNCHERS:
        op = functor(template_args(name))
        return f"{category}:{op}" if op else f"{category}:{own}"
    if category == "gemm":
        if own in ("splitKreduce_kernel",) or "splitkreduce" in own.lower():
            return "gemm:splitk_reduce"
        conv = _conv_pass(name)
        if conv:
            return f"gemm:{conv}"
        if _is_library_gemm(name):
            dtype = gemm_dtype(name)
            return f"gemm:{dtype}" if dtype else "gemm"
    return f"{category}:{_plain(own)}"
