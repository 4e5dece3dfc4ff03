"""The shared classifiers: kernel names from every vendor's libraries, and the roles of runtime calls."""
import pytest

from profkit import classify

CASES = [
    ("kernel", "ampere_sgemm_128x128_tn", "gemm"),
    ("kernel", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "gemm"),
    ("kernel", "nvjet_tst_192x8_64x8_4x1_v_bz_TNT", "gemm"),
    ("kernel", "Cijk_Alik_Bljk_BBS_BH_Bias_HA_S_SAV_UserArgs_MT256x192x64_MI16x16x1", "gemm"),
    ("kernel", "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_256x128_64x3_tn_align2>", "gemm"),
    ("kernel", "igemm_fwd_gtcx2_nhwc_bf16_bx0_ex1_bt128x128x32", "gemm"),
    ("kernel", "kernel_mul_mat_q4_0_f32", "gemm"),
    ("kernel", "fmhaSm100aKernel_QkvE4m3OBfloat16H64PagedKvCausalP16VarSeqQ128Kv128PersistentContext", "attention"),
    ("kernel", "kernel_unified_attention_2d", "attention"),
    ("kernel", "void flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4>>", "attention"),
    ("kernel", "ncclKernel_AllReduce_RING_LL_Sum_float(ncclDevComm*, unsigned long, ncclWork*)", "communication"),
    ("kernel", "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", "communication"),
    ("kernel", "void (anonymous namespace)::multimem_all_reduce_kernel<c10::BFloat16, 16>", "communication"),
    ("kernel", "__amd_rocclr_copyBuffer.kd", "memory"),
    ("kernel", "__amd_rocclr_fillBufferAligned.kd", "memory"),
    ("memcpy", "Memcpy HtoD (Pageable -> Device)", "memory"),
    ("memset", "Memset (Device)", "memory"),
    ("kernel", "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>", "normalization"),
    ("kernel", "_ZN5aiter24add_rmsnorm_quant_kernelIDF16bDF16bLi256E", "normalization"),
    ("kernel", "void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 128, true, 1, true>", "normalization"),
    ("kernel", "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>", "reduction"),
    ("kernel", "void (anonymous namespace)::softmax_warp_forward<float, float, float, 1, false, false>", "reduction"),
    ("kernel", "triton_red_fused__unsafe_view_add_mean_mul_pow_rsqrt_1", "reduction"),
    ("kernel", "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
    ("kernel", "triton_poi_fused__unsafe_view_mul_silu_2", "elementwise"),
    ("kernel", "void at::native::vectorized_elementwise_kernel<4, at::native::bfloat16tofloat32_copy_kernel_cuda>", "elementwise"),
    ("kernel", "merge", "other"),
    # fbgemm_gpu's namespace is not a GEMM (the regression pair's embedding permutes)
    ("kernel", "void fbgemm_gpu::permute_2D_lengths_kernel<int>(int, int, int const*, int const*, int*)", "elementwise"),
    ("kernel", "void fbgemm_gpu::_offsets_range_cuda_kernel<long>(long, long, long const*, long*)", "other"),
    ("kernel", "void fbgemm_gpu::bf16_fast_gemv_kernel<64>(int, int)", "gemm"),
    # rocprof v1 MI300X sample's only kernel: "mul" in "multiplication" is no elementwise op
    ("kernel", "batched_matrix_multiplication(unsigned int, unsigned int, unsigned int, float const*)", "gemm"),
    ("kernel", "MatrixMulCUDA<32>", "gemm"),
    # layout transforms and (de)quantisation are data movement, not "other"
    ("kernel", "void cudnn::ops::nchwToNhwcKernel<float, float, float, false, true, (cudnnKernelDataType_t)2>", "elementwise"),
    ("kernel", "dequantize_block_q4_0", "elementwise"),
]


@pytest.mark.parametrize("kind,name,expected", CASES)
def test_category(kind, name, expected):
    assert classify.category(kind, name) == expected


def test_host_kinds_have_no_category():
    assert classify.category("cpu_op", "aten::mm") is None
    assert classify.category("runtime", "cudaLaunchKernel") is None


@pytest.mark.parametrize("name,op", [
    ("ncclKernel_AllReduce_RING_LL_Sum_float", "all_reduce"),
    ("ncclDevKernel_ReduceScatter_Sum_f32_RING_LL", "reduce_scatter"),
    ("ncclDevKernel_AllGather_RING_LL", "all_gather"),
    ("ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t", "send_recv"),
    ("ncclKernel_Broadcast_RING_LL_Sum_int8_t", "broadcast"),
    ("allreduce", "all_reduce"), ("_allgather_base", "all_gather"),
    ("reduce_scatter_tensor_coalesced", "reduce_scatter"), ("all_to_all", "all_to_all"),
    ("send", "send"), ("recv", "recv"), ("barrier", "other"),
])
def test_collective_op(name, op):
    assert classify.collective_op(name) == op


def test_every_rule_names_a_known_category_and_compiles():
    rules = classify.category_rules()
    assert rules and all(r.category in classify.CATEGORIES for r in rules)


def test_runtime_call_roles_table():
    """Every pass reads runtime calls through one table (data/runtime_calls.csv)."""
    role = classify.runtime_role
    assert role("cudaStreamSynchronize") == role("hipEventSynchronize") == role("cuCtxSynchronize") == "sync"
    assert role("cudaDeviceSynchronize_v3020") == "sync"
    assert role("cudaMemcpy") == role("hipMemcpyWithStream") == role("cuMemcpyDtoH_v2") == "blocking_copy"
    assert role("cudaMalloc") == role("hipHostMalloc") == role("cudaFree_v3020") == "allocator"
    assert role("cudaMallocAsync") is None and role("cudaLaunchKernel") is None
    assert role("synchronizeStream") == role("synchronize") == role("hsa_signal_wait_scacquire") == "sync"
    assert role("synchronizeStreamLater") is None and role("enqueueCommand waitOnEvent") is None
    # The graph's and the idle pass's calls, from the same table: the first row that matches wins.
    assert role("cudaMemcpyAsync") == "copy" and role("cudaMemcpy") == "blocking_copy"
    assert role("hipMemcpyAsync") == role("cudaMemcpy2DAsync_v3020") == role("cuMemcpyHtoDAsync_v2") == "copy"
    assert role("cudaStreamWaitEvent") == role("hipStreamWaitEvent") == "stream_wait"
    assert role("cuStreamWaitValue32") == role("cudaWaitExternalSemaphoresAsync") == "device_wait"
    assert role("cudaEventRecord") == role("hipEventRecordWithFlags") == "event_record"
    assert role("cudaEventSynchronize") == "sync" and role("cudaLaunchKernel") is None
    assert role("cudaGraphLaunch") == role("hipGraphLaunch") == role("cudaGraphLaunch_v10000") == "graph_launch"
    # Intel XPU: Level Zero syncs match the general row, Unified Runtime's waits their own.
    assert role("zeEventHostSynchronize") == role("urQueueFinish") == role("urEventWait") == "sync"
    assert role("urEnqueueKernelLaunch") is None and role("urEnqueueUSMMemcpy") == "copy"
    # Device-wide syncs are a row of their own (scope `device`): still role `sync` for every pass.
    scope = classify.runtime_scope
    for name in ("cudaDeviceSynchronize", "hipDeviceSynchronize", "cuCtxSynchronize", "cudaDeviceSynchronize_v3020",
                 "aclrtSynchronizeDevice"):
        assert role(name) == "sync" and scope(name) == "device", name
    for name in ("cudaStreamSynchronize", "hipEventSynchronize", "synchronizeStream", "cudaMemcpy", None):
        assert scope(name) is None, name
