// cuBLASLt, cuDNN and NCCL, loaded with dlopen when first used: a CPU-only run neither needs the libraries
// installed nor pays for loading them (cuBLASLt alone maps ~150 MB, NCCL ~200 MB). Every function called is
// listed here once and called as lib::cublaslt().cublasLtMatmul(...); the binary does not link the libraries,
// so a call that bypasses this table fails to link.
#pragma once

#include <cublasLt.h>
#include <cudnn.h>
#include <nccl.h>

namespace trainer::engine::cuda::lib {

// clang-format off
#define TRAINER_CUBLASLT_FUNCTIONS(X) \
  X(cublasLtCreate) \
  X(cublasLtDestroy) \
  X(cublasLtGetVersion) \
  X(cublasLtMatmul) \
  X(cublasLtMatmulDescCreate) \
  X(cublasLtMatmulDescDestroy) \
  X(cublasLtMatmulDescSetAttribute) \
  X(cublasLtMatrixLayoutCreate) \
  X(cublasLtMatrixLayoutDestroy) \
  X(cublasLtMatrixLayoutSetAttribute) \
  X(cublasLtMatmulPreferenceCreate) \
  X(cublasLtMatmulPreferenceDestroy) \
  X(cublasLtMatmulPreferenceSetAttribute) \
  X(cublasLtMatmulAlgoGetHeuristic)

#define TRAINER_CUDNN_FUNCTIONS(X) \
  X(cudnnCreate) \
  X(cudnnDestroy) \
  X(cudnnSetStream) \
  X(cudnnGetStream) \
  X(cudnnGetErrorString) \
  X(cudnnGetVersion) \
  X(cudnnCreateTensorDescriptor) \
  X(cudnnDestroyTensorDescriptor) \
  X(cudnnSetTensor4dDescriptor) \
  X(cudnnSetTensor4dDescriptorEx) \
  X(cudnnSetTensorNdDescriptor) \
  X(cudnnCreateFilterDescriptor) \
  X(cudnnDestroyFilterDescriptor) \
  X(cudnnSetFilter4dDescriptor) \
  X(cudnnSetFilterNdDescriptor) \
  X(cudnnCreateConvolutionDescriptor) \
  X(cudnnDestroyConvolutionDescriptor) \
  X(cudnnSetConvolution2dDescriptor) \
  X(cudnnSetConvolutionNdDescriptor) \
  X(cudnnSetConvolutionGroupCount) \
  X(cudnnSetConvolutionMathType) \
  X(cudnnGetConvolutionForwardAlgorithm_v7) \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7) \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7) \
  X(cudnnFindConvolutionForwardAlgorithmEx) \
  X(cudnnFindConvolutionBackwardDataAlgorithmEx) \
  X(cudnnFindConvolutionBackwardFilterAlgorithmEx) \
  X(cudnnGetConvolutionForwardWorkspaceSize) \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize) \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) \
  X(cudnnConvolutionForward) \
  X(cudnnConvolutionBackwardData) \
  X(cudnnConvolutionBackwardFilter) \
  X(cudnnCreatePoolingDescriptor) \
  X(cudnnDestroyPoolingDescriptor) \
  X(cudnnSetPooling2dDescriptor) \
  X(cudnnSetPoolingNdDescriptor) \
  X(cudnnPoolingForward) \
  X(cudnnPoolingBackward) \
  X(cudnnDeriveBNTensorDescriptor) \
  X(cudnnBatchNormalizationForwardTraining) \
  X(cudnnBatchNormalizationForwardInference) \
  X(cudnnBatchNormalizationBackward) \
  X(cudnnAddTensor) \
  X(cudnnCreateRNNDescriptor) \
  X(cudnnDestroyRNNDescriptor) \
  X(cudnnSetRNNDescriptor_v8) \
  X(cudnnCreateRNNDataDescriptor) \
  X(cudnnDestroyRNNDataDescriptor) \
  X(cudnnSetRNNDataDescriptor) \
  X(cudnnGetRNNWeightSpaceSize) \
  X(cudnnGetRNNWeightParams) \
  X(cudnnGetRNNTempSpaceSizes) \
  X(cudnnRNNForward) \
  X(cudnnRNNBackwardData_v8) \
  X(cudnnRNNBackwardWeights_v8)

#define TRAINER_NCCL_FUNCTIONS(X) \
  X(ncclGetVersion) \
  X(ncclGetUniqueId) \
  X(ncclGetErrorString) \
  X(ncclGetLastError) \
  X(ncclCommInitRank) \
  X(ncclCommFinalize) \
  X(ncclCommDestroy) \
  X(ncclCommAbort) \
  X(ncclCommGetAsyncError) \
  X(ncclGroupStart) \
  X(ncclGroupEnd) \
  X(ncclAllReduce) \
  X(ncclReduce) \
  X(ncclRedOpCreatePreMulSum) \
  X(ncclRedOpDestroy) \
  X(ncclReduceScatter) \
  X(ncclAllGather) \
  X(ncclBroadcast)
// clang-format on

#define TRAINER_DECLARE_POINTER(f) decltype(&::f) f = nullptr;

struct CublasLt {
  TRAINER_CUBLASLT_FUNCTIONS(TRAINER_DECLARE_POINTER)
};
struct Cudnn {
  TRAINER_CUDNN_FUNCTIONS(TRAINER_DECLARE_POINTER)
};
struct Nccl {
  TRAINER_NCCL_FUNCTIONS(TRAINER_DECLARE_POINTER)
};

#undef TRAINER_DECLARE_POINTER

// Load on first use (thread-safe); a missing library or function is a RuntimeError naming it, with a hint.
const CublasLt& cublaslt();
const Cudnn& cudnn();
const Nccl& nccl();

}  // namespace trainer::engine::cuda::lib
