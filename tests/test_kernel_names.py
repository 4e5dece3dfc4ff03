"""Kernel-name normalisation on real names from NVIDIA and AMD traces."""
from __future__ import annotations

import pytest

import profkit
from profkit.kernel_names import functor, gemm_dtype, normalize, own_name

from conftest import shared_trace

# (raw name as recorded on the device, kind, expected key). Names are copied from the
# shared traces: A100/V100 regression pair, H100 and MI300X Qwen, MI300X SGLang, B200.
REAL_NAMES = [
    # Legacy cuBLAS on two generations: the tile config and the arch prefix go.
    ("ampere_sgemm_128x64_nn", "kernel", "gemm:f32"),
    ("volta_sgemm_128x64_nn", "kernel", "gemm:f32"),
    ("volta_sgemm_32x32_sliced1x4_tn", "kernel", "gemm:f32"),
    ("void cutlass::Kernel<cutlass_80_tensorop_s1688gemm_64x64_32x4_nn_align1>"
     "(cutlass_80_tensorop_s1688gemm_64x64_32x4_nn_align1::Params)", "kernel", "gemm:f32"),
    ("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_nn_align1>"
     "(cutlass_80_simt_sgemm_128x32_8x5_nn_align1::Params)", "kernel", "gemm:f32"),
    # cuBLAS on H100 vs hipBLASLt/Tensile on MI300X, both bf16.
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_"
     "execute_segment_k_off_kernel__5x_cublas", "kernel", "gemm:bf16"),
    ("Cijk_Alik_Bljk_B_BS_BH_Bias_HA_S_SAV_UserArgs_MT256x128x64_MI16x16x1_SN_LDSB1_AFC1_"
     "AFEM1_AFEM1_ASEM1_CLR1_CADS0_DTVA0_DTVB0_EPS0_FDSI0_GRPM1_GRVWA8_GRVWB8_GSUAMB_GLS0_ISA942",
     "kernel", "gemm:bf16"),
    ("Cijk_Alik_Bljk_BBS_BH_Bias_HA_S_SAV_UserArgs_MT256x32x64_MI16x16x1_SN_LDSB1_AFC1",
     "kernel", "gemm:bf16"),
    ("Cijk_Ailk_Bljk_S_B_Bias_HA_S_SAV_UserArgs_MT16x16x128_MI16x16x1_SN_LDSB1_AFC1",
     "kernel", "gemm:f32"),
    ("std::enable_if<!(false), void>::type internal::gemvx::kernel<int, int, float, float, float, "
     "float, false, true, false, false, 7, cublasGemvParams<cublasGemvTensorStridedBatched<float "
     "const>, cublasGemvTensorStridedBatched<float const>, cublasGemvTensorStridedBatched<float>, "
     "float> >(cublasGemvParams<cublasGemvTensorStridedBatched<float const>, "
     "cublasGemvTensorStridedBatched<float const>, cublasGemvTensorStridedBatched<float>, float>)",
     "kernel", "gemm:f32"),
    ("void splitKreduce_kernel<float, float, float, float, true, false, false>"
     "(cublasSplitKParams<float>, float const*, float const*, float*)", "kernel", "gemm:splitk_reduce"),
    ("sm80_xmma_dgrad_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize64x64x32",
     "kernel", "gemm:conv_dgrad"),
    # Attention: FlashAttention on H100, aotriton on MI300X, paged decode on ROCm.
    ("void pytorch_flash::flash_fwd_kernel<pytorch_flash::Flash_fwd_kernel_traits<64, 128, 128, "
     "4, false, false, cutlass::bfloat16_t, pytorch_flash::Flash_kernel_traits<64, 128, 128, 4, "
     "cutlass::bfloat16_t> >, false, true, false, false, true, true, false, false>"
     "(pytorch_flash::Flash_fwd_params)", "kernel", "attention:fwd"),
    ("attn_fwd", "kernel", "attention:fwd"),
    ("void paged_attention_ll4mi_QKV_mfma16_kernel<0, __hip_bfloat16, __hip_bfloat16, "
     "(vllm::Fp8KVCacheDataType)0, 1, 128, 256, false, 4, 1>(float)", "kernel", "attention:fwd_decode"),
    ("void paged_attention_ll4mi_reduce_kernel<__hip_bfloat16, __hip_bfloat16, 128, 128, 256, 3, "
     "false>(__hip_bfloat16*, float const*)", "kernel", "attention:fwd_combine"),
    # PyTorch generic launchers keyed by their functor, whatever the launcher variant.
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
     "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3>)",
     "kernel", "elementwise:add"),
    ("void at::native::elementwise_kernel_manual_unroll<128, 8, at::native::gpu_kernel_impl_nocast<"
     "at::native::CUDAFunctor_add<c10::BFloat16> >(at::TensorIteratorBase&, "
     "at::native::CUDAFunctor_add<c10::BFloat16> const&)::{lambda(int)#1}>(int, "
     "at::native::gpu_kernel_impl_nocast<at::native::CUDAFunctor_add<c10::BFloat16> >)",
     "kernel", "elementwise:add"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<"
     "at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, "
     "at::native::binary_internal::MulFunctor<float> > >(at::TensorIteratorBase&, "
     "at::native::BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, "
     "at::native::binary_internal::MulFunctor<float> > const&)::{lambda(int)#1}>(int, "
     "at::native::gpu_kernel_impl_nocast)", "kernel", "elementwise:mul"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctorOnSelf_add<float>, "
     "std::array<char*, 2ul> >(int, at::native::CUDAFunctorOnSelf_add<float>, std::array<char*, 2ul>)",
     "kernel", "elementwise:add"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda("
     "at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::"
     "{lambda(float)#1}, std::array<char*, 2ul>, 4>(int)", "kernel", "elementwise:direct_copy"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int>, "
     "std::array<char*, 1ul> >(int, at::native::FillFunctor<int>, std::array<char*, 1ul>)",
     "kernel", "elementwise:fill"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor<long, long, bool, "
     "at::native::(anonymous namespace)::CompareEqFunctor<long> >, std::array<char*, 2ul> >(int)",
     "kernel", "elementwise:eq"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, "
     "float, float, float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, "
     "at::native::MeanOps<float, float, float, float>, unsigned int, float, 4, 4>)",
     "kernel", "reduction:mean"),
    ("void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float, at::native::func_wrapper_t<"
     "float, at::native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::"
     "{lambda(float, float)#1}>, unsigned int, float, 4> >(float)", "kernel", "reduction:sum"),
    ("void multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>, float, float, float, "
     "float, float, float, adamMode_t, float, int, int>(int, int volatile*)", "kernel", "elementwise:adam"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::GeluCUDAKernelImpl("
     "at::TensorIteratorBase&, at::native::GeluType)::{lambda()#2}::operator()() const>(int)",
     "kernel", "elementwise:gelu"),
    # Library kernels named by themselves: template args, params, tile and number suffixes go.
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 2, 128, 1>"
     "(float*, at::native::(anonymous namespace)::CatArrInputTensorMetadata<float, unsigned int, 128, 1>)",
     "kernel", "elementwise:cat_array_batched_copy"),
    ("_ZN5aiter24add_rmsnorm_quant_kernelIDF16bDF16bLi256ELi16ELb1ELb0ELb1ELi1EEEvPT0_PT_PfS4_S4_S4_diiiiiiib",
     "kernel", "normalization:add_rmsnorm_quant"),
    ("triton_poi_fused__unsafe_view_add_3", "kernel", "elementwise:triton_poi_fused__unsafe_view_add"),
    ("void epilogue::impl::globalKernel<float, float, float, true, true>(int, int, long, float*)",
     "kernel", "elementwise:epilogue_global"),
    # Communication by collective, copies by direction.
    ("ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t(ncclWorkElem)", "kernel", "communication:send_recv"),
    ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "kernel", "communication:all_gather"),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "kernel", "communication:all_reduce"),
    ("Memcpy HtoD (Pinned -> Device)", "memcpy", "memory:memcpy_htod"),
    ("Memcpy DtoD (Device -> Device)", "memcpy", "memory:memcpy_dtod"),
    ("Memset (Device)", "memset", "memory:memset"),
    ("__amd_rocclr_copyBuffer", "kernel", "memory:copy_buffer"),
]


@pytest.mark.parametrize("name,kind,expected", REAL_NAMES)
def test_real_names_normalise(name, kind, expected):
    assert normalize(name, kind) == expected


def test_same_tile_on_two_generations_is_one_key():
    assert normalize("ampere_sgemm_128x64_nn") == normalize("volta_sgemm_128x64_nn")


def test_helpers():
    assert own_name("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>(float*)") == "CatArrayBatchedCopy"
    assert own_name("_ZN5aiter24add_rmsnorm_quant_kernelIDF16bEEv") == "add_rmsnorm_quant_kernel"
    assert functor("<4, at::native::BinaryFunctor<float, float, float, "
                   "at::native::binary_internal::DivFunctor<float> > >") == "div"
    assert gemm_dtype("nvjet_tst_64x64_64x16_2x1_2cta_v_bz_bias_TNT") is None
    assert normalize("nvjet_tst_64x64_64x16_2x1_2cta_v_bz_bias_TNT") == "gemm"
    assert normalize(None) == "other:unnamed"


def _keys_by_time(path):
    store = profkit.load(path)
    try:
        rows = store.rows("SELECT kind, name, sum(dur_ns) AS t FROM device_events GROUP BY kind, name")
    finally:
        store.close()
    totals: dict[str, int] = {}
    for r in rows:
        key = normalize(r["name"], r["kind"])
        totals[key] = totals.get(key, 0) + r["t"]
    return totals


def test_cross_vendor_keys_cover_the_same_work():
    """Same model on H100 and MI300X: the kernel keys covering 99% of the H100 device time
    are (but for cuBLAS's split-K memsets) all found on MI300X, although not one raw kernel
    name of a GEMM, attention or PyTorch launcher is shared."""
    h100 = _keys_by_time(shared_trace("kineto/cuda/h100_qwen1.5_0.5b_chat.json.gz"))
    mi300 = _keys_by_time(shared_trace("kineto/rocm/mi300x_qwen1.5_0.5b_chat.json.gz"))
    total = sum(h100.values())
    covered = sum(t for k, t in h100.items() if k in mi300)
    assert covered / total > 0.99
    for key in ("gemm:bf16", "attention:fwd", "elementwise:mul", "elementwise:add", "reduction:mean"):
        assert key in h100 and key in mi300


def test_a100_vs_v100_gemms_share_a_key():
    """The regression pair: tf32 CUTLASS GEMMs on A100 and SIMT sgemm on V100 are one key."""
    store = profkit.load(shared_trace("kineto/cuda/regression_pair"))
    try:
        names = store.rows("SELECT trace_id, name FROM events WHERE kind = 'kernel' AND category = 'gemm' "
                           "AND (name LIKE '%sgemm%' OR name LIKE '%s1688gemm%') GROUP BY ALL")
    finally:
        store.close()
    by_trace: dict[int, set[str]] = {}
    for r in names:
        by_trace.setdefault(r["trace_id"], set()).add(normalize(r["name"]))
    assert by_trace[0] == by_trace[1] == {"gemm:f32"}
