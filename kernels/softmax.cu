// Row softmax and fused softmax cross-entropy over (n, C) float32 logits, row-major.
//
// Plain CUDA C++ with no toolkit headers (NVRTC via CuPy, nvcc in the tests, the host C++
// compiler under tests/cuda_emu).
//
// mode 0 (softmax):  out = exp(z - max z) / sum exp(z - max z).
// mode 1 (cross-entropy), labels y (int64), optional class weights w:
//   rowloss[i] = w_i * (log sum exp(z_i - max) - (z_i[y_i] - max))      (w_i = 1 without weights)
//   out[i, j]  = (softmax(z_i)_j - [j == y_i]) * s_i,  s_i = 1 / n, or w_i / total with weights
//   where total = sum_i w[y_i] was written to total[0] by
//   softmax_cross_entropy_weight_total.
// The mean loss is then reduced by softmax_cross_entropy_loss_reduce in a fixed order (no
// atomics).
// A label outside [0, C) makes that row's loss NaN (the caller validates labels first).
//
// Kernel names follow the backend op (docs/architecture.md, "Op table"): softmax_warp_* and
// softmax_block serve both ops (softmax, softmax_cross_entropy), the others the loss only.
// softmax_warp_<ITEMS>: one warp per row, C <= 32 * ITEMS, the row kept in registers, max and
// sum by warp shuffles; softmax_block: one block per row (any C), online max / sum per thread,
// merged in shared memory, then a second pass over the row (mostly from cache).

__device__ __forceinline__ float sm_neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float sm_nan() { return __int_as_float(0x7fffffff); }

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The per-row scale of the gradient and the weight of the row's loss.
__device__ __forceinline__ void ce_row_scale(long long label, int C,
                                             const float* __restrict__ weights,
                                             const float* __restrict__ total, int has_weights,
                                             float inv_n, float* scale, float* w)
{
    if (has_weights) {
        const float wi = (label >= 0 && label < C) ? weights[label] : 0.0f;
        *w = wi;
        *scale = wi / total[0];
    } else {
        *w = 1.0f;
        *scale = inv_n;
    }
}

template <int ITEMS>
__device__ void softmax_warp_impl(const float* __restrict__ logits,
                                  const long long* __restrict__ labels,
                                  const float* __restrict__ weights,
                                  const float* __restrict__ total, int n, int C, int mode,
                                  int has_weights, float inv_n, float* __restrict__ out,
                                  float* __restrict__ rowloss)
{
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n) return;  // uniform across the warp
    const float* z = logits + row * C;
    float* o = out + row * C;
    float v[ITEMS];
    float m = sm_neg_inf();
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = lane + 32 * i;
        v[i] = j < C ? z[j] : sm_neg_inf();
        m = fmaxf(m, v[i]);
    }
    m = warp_max(m);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = lane + 32 * i;
        v[i] = j < C ? expf(v[i] - m) : 0.0f;
        s += v[i];
    }
    s = warp_sum(s);
    const float inv_s = 1.0f / s;
    if (mode == 0) {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int j = lane + 32 * i;
            if (j < C) o[j] = v[i] * inv_s;
        }
        return;
    }
    const long long label = labels[row];
    float scale, w;
    ce_row_scale(label, C, weights, total, has_weights, inv_n, &scale, &w);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = lane + 32 * i;
        if (j < C) o[j] = (v[i] * inv_s - (j == label ? 1.0f : 0.0f)) * scale;
    }
    if (lane == 0) {
        float nll = sm_nan();
        if (label >= 0 && label < C) nll = logf(s) - (z[label] - m);
        rowloss[row] = has_weights ? w * nll : nll;
    }
}

// One instance per row width class, each named in full (the host code picks one by name).
extern "C" __global__ void softmax_warp_1(const float* __restrict__ logits,
                                          const long long* __restrict__ labels,
                                          const float* __restrict__ weights,
                                          const float* __restrict__ total, int n, int C,
                                          int mode, int has_weights, float inv_n,
                                          float* __restrict__ out, float* __restrict__ rowloss)
{
    softmax_warp_impl<1>(logits, labels, weights, total, n, C, mode, has_weights, inv_n, out,
                          rowloss);
}

extern "C" __global__ void softmax_warp_2(const float* __restrict__ logits,
                                          const long long* __restrict__ labels,
                                          const float* __restrict__ weights,
                                          const float* __restrict__ total, int n, int C,
                                          int mode, int has_weights, float inv_n,
                                          float* __restrict__ out, float* __restrict__ rowloss)
{
    softmax_warp_impl<2>(logits, labels, weights, total, n, C, mode, has_weights, inv_n, out,
                          rowloss);
}

extern "C" __global__ void softmax_warp_4(const float* __restrict__ logits,
                                          const long long* __restrict__ labels,
                                          const float* __restrict__ weights,
                                          const float* __restrict__ total, int n, int C,
                                          int mode, int has_weights, float inv_n,
                                          float* __restrict__ out, float* __restrict__ rowloss)
{
    softmax_warp_impl<4>(logits, labels, weights, total, n, C, mode, has_weights, inv_n, out,
                          rowloss);
}

extern "C" __global__ void softmax_warp_8(const float* __restrict__ logits,
                                          const long long* __restrict__ labels,
                                          const float* __restrict__ weights,
                                          const float* __restrict__ total, int n, int C,
                                          int mode, int has_weights, float inv_n,
                                          float* __restrict__ out, float* __restrict__ rowloss)
{
    softmax_warp_impl<8>(logits, labels, weights, total, n, C, mode, has_weights, inv_n, out,
                          rowloss);
}

extern "C" __global__ void softmax_warp_16(const float* __restrict__ logits,
                                          const long long* __restrict__ labels,
                                          const float* __restrict__ weights,
                                          const float* __restrict__ total, int n, int C,
                                          int mode, int has_weights, float inv_n,
                                          float* __restrict__ out, float* __restrict__ rowloss)
{
    softmax_warp_impl<16>(logits, labels, weights, total, n, C, mode, has_weights, inv_n, out,
                          rowloss);
}

extern "C" __global__ void softmax_warp_32(const float* __restrict__ logits,
                                          const long long* __restrict__ labels,
                                          const float* __restrict__ weights,
                                          const float* __restrict__ total, int n, int C,
                                          int mode, int has_weights, float inv_n,
                                          float* __restrict__ out, float* __restrict__ rowloss)
{
    softmax_warp_impl<32>(logits, labels, weights, total, n, C, mode, has_weights, inv_n, out,
                          rowloss);
}

#define SM_BLOCK_MAX 1024

// One block per row; blockDim.x a power of two <= SM_BLOCK_MAX.
extern "C" __global__ void softmax_block(const float* __restrict__ logits,
                                         const long long* __restrict__ labels,
                                         const float* __restrict__ weights,
                                         const float* __restrict__ total, int n, int C, int mode,
                                         int has_weights, float inv_n, float* __restrict__ out,
                                         float* __restrict__ rowloss)
{
    __shared__ float s_m[SM_BLOCK_MAX];
    __shared__ float s_s[SM_BLOCK_MAX];
    const int t = threadIdx.x, bd = blockDim.x;
    const long long row = blockIdx.x;
    const float* z = logits + row * C;
    float* o = out + row * C;
    // online max and sum of exp(z - max) over this thread's elements
    float m = sm_neg_inf(), s = 0.0f;
    for (int j = t; j < C; j += bd) {
        const float zj = z[j];
        if (zj > m) {
            s = s * expf(m - zj) + 1.0f;
            m = zj;
        } else {
            s += expf(zj - m);
        }
    }
    s_m[t] = m;
    s_s[t] = s;
    __syncthreads();
    for (int h = bd >> 1; h > 0; h >>= 1) {
        if (t < h) {
            const float m1 = s_m[t], m2 = s_m[t + h];
            const float s1 = s_s[t], s2 = s_s[t + h];
            if (m2 == sm_neg_inf()) {
                // nothing to add
            } else if (m1 == sm_neg_inf()) {
                s_m[t] = m2;
                s_s[t] = s2;
            } else {
                const float mm = fmaxf(m1, m2);
                s_m[t] = mm;
                s_s[t] = s1 * expf(m1 - mm) + s2 * expf(m2 - mm);
            }
        }
        __syncthreads();
    }
    const float mx = s_m[0];
    const float sum = s_s[0];
    const float inv_s = 1.0f / sum;
    if (mode == 0) {
        for (int j = t; j < C; j += bd) o[j] = expf(z[j] - mx) * inv_s;
        return;
    }
    const long long label = labels[row];
    float scale, w;
    ce_row_scale(label, C, weights, total, has_weights, inv_n, &scale, &w);
    for (int j = t; j < C; j += bd)
        o[j] = (expf(z[j] - mx) * inv_s - (j == label ? 1.0f : 0.0f)) * scale;
    if (t == 0) {
        float nll = sm_nan();
        if (label >= 0 && label < C) nll = logf(sum) - (z[label] - mx);
        rowloss[row] = has_weights ? w * nll : nll;
    }
}

// ---------------------------------------------------------------------------------------------
// Single-block fixed-order reductions (blockDim.x a power of two <= SM_BLOCK_MAX, grid (1,)).

__device__ __forceinline__ float block_sum_pow2(float v, float* s_buf)
{
    const int t = threadIdx.x;
    s_buf[t] = v;
    __syncthreads();
    for (int h = blockDim.x >> 1; h > 0; h >>= 1) {
        if (t < h) s_buf[t] += s_buf[t + h];
        __syncthreads();
    }
    return s_buf[0];
}

// total[0] = sum_i weights[labels[i]] (labels outside [0, C) count 0).
extern "C" __global__ void softmax_cross_entropy_weight_total(const long long* __restrict__ labels,
                                           const float* __restrict__ weights, int n, int C,
                                           float* __restrict__ total)
{
    __shared__ float s_buf[SM_BLOCK_MAX];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const long long y = labels[i];
        acc += (y >= 0 && y < C) ? weights[y] : 0.0f;
    }
    const float r = block_sum_pow2(acc, s_buf);
    if (threadIdx.x == 0) total[0] = r;
}

// loss[0] = sum_i rowloss[i] / (total[0] if has_weights else fn).
extern "C" __global__ void softmax_cross_entropy_loss_reduce(
    const float* __restrict__ rowloss, int n, const float* __restrict__ total, int has_weights,
    float fn, float* __restrict__ loss)
{
    __shared__ float s_buf[SM_BLOCK_MAX];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += rowloss[i];
    const float r = block_sum_pow2(acc, s_buf);
    if (threadIdx.x == 0) loss[0] = r / (has_weights ? total[0] : fn);
}

// ---------------------------------------------------------------------------------------------
// Packed cross-entropy: K members' (n, C) logits side by side as (n, K*C), that is n*K rows of
// width C, row r = i*K + k being member k's row i; labels (n, K) line up with those rows.
// The row kernels above run over the n*K rows (without weights: s_i = 1 / n, or 1 with
// weights, applied next); these kernels add the member axis: one block per member for the
// weight totals and the losses (the single-member kernels' summation order, so a member's
// loss has the bits the single op gives it), and the per-member class weights.

// total[k] = sum_i weights[k, labels[i, k]] (labels outside [0, C) count 0); grid (K,).
extern "C" __global__ void softmax_cross_entropy_packed_weight_total(
    const long long* __restrict__ labels, const float* __restrict__ weights, int n, int K,
    int C, float* __restrict__ total)
{
    __shared__ float s_buf[SM_BLOCK_MAX];
    const int k = blockIdx.x;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const long long y = labels[(long long)i * K + k];
        acc += (y >= 0 && y < C) ? weights[(long long)k * C + y] : 0.0f;
    }
    const float r = block_sum_pow2(acc, s_buf);
    if (threadIdx.x == 0) total[k] = r;
}

// With class weights, after the row kernel ran with s_i = 1: out[r, j] *= w_r / total[k],
// rowloss[r] = w_r * rowloss[r], w_r = weights[k, labels[r]] (k = r % K); grid-stride over
// the n*K*C elements.
extern "C" __global__ void softmax_cross_entropy_packed_weight_apply(
    const long long* __restrict__ labels, const float* __restrict__ weights,
    const float* __restrict__ total, int rows, int K, int C, float* __restrict__ out,
    float* __restrict__ rowloss)
{
    const long long size = (long long)rows * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < size;
         e += stride) {
        const long long r = e / C;
        const int k = (int)(r % K);
        const long long y = labels[r];
        const float w = (y >= 0 && y < C) ? weights[(long long)k * C + y] : 0.0f;
        out[e] = out[e] * (w / total[k]);
        if (e - r * C == 0) rowloss[r] = w * rowloss[r];
    }
}

// losses[k] = sum_i rowloss[i, k] / (total[k] if has_weights else fn); grid (K,).
extern "C" __global__ void softmax_cross_entropy_packed_loss_reduce(
    const float* __restrict__ rowloss, int n, int K, const float* __restrict__ total,
    int has_weights, float fn, float* __restrict__ losses)
{
    __shared__ float s_buf[SM_BLOCK_MAX];
    const int k = blockIdx.x;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += rowloss[(long long)i * K + k];
    const float r = block_sum_pow2(acc, s_buf);
    if (threadIdx.x == 0) losses[k] = r / (has_weights ? total[k] : fn);
}
