// Batch normalization over (n, C) float32, row-major, samples on axis 0
// (docs/architecture.md, "Conventions").
//
// Plain CUDA C++ with no toolkit headers: compiled by NVRTC through CuPy's RawModule, by
// nvcc in the tests, and by the host C++ compiler under the CUDA emulation in tests/cuda_emu.
//
// Tiling shared by every kernel here: a block of (bdx, bdy) threads covers bdx * VEC columns
// (threads coalesced along C, VEC = 4 uses 16-byte loads and needs C % 4 == 0 and 16-byte
// aligned pointers) and one chunk of `rpc` rows (blockIdx.y); thread (tx, ty) visits rows
// chunk_begin + ty, + bdy, ... .  Column reductions are per thread, then merged by the
// thread with ty == 0 in a fixed order in shared memory, then written as one partial per
// (chunk, column); a second small kernel merges the partials in chunk order.  No atomics:
// results repeat bit for bit.
//
// Training statistics: Welford accumulators on the shifted values x - K, where K = x[0, c]
// (a sample of the column), merged with Chan's formula.  The shift keeps the running mean
// of the shifted data small, so a column with mean 1e4 and std 1e-2 keeps its precision
// (plain float32 Welford on such data stalls once the mean increment drops below half an
// ulp).  The apply kernel normalizes with ((x - K) - mean_shifted) for the same reason.
// Blocks of the apply kernels walk the chunks in reverse order, so the first chunks they
// read are the last ones the statistics pass left in L2.
//
// Kernel names follow the backend op they serve (docs/architecture.md, "Op table"):
// batchnorm_forward_train_{stats,finish,finish_colmomentum,apply}, batchnorm_forward_infer,
// batchnorm_backward_{reduce,finish,apply}; _v1 / _v4 are the scalar and float4 variants.

#define BN_MAX_THREADS 256

template <int VEC>
__device__ __forceinline__ void bn_load(const float* __restrict__ p, float* v)
{
    if constexpr (VEC == 4) {
        const float4 t = *reinterpret_cast<const float4*>(p);
        v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = p[k];
    }
}

template <int VEC>
__device__ __forceinline__ void bn_store(float* __restrict__ p, const float* v)
{
    if constexpr (VEC == 4) {
        float4 t;
        t.x = v[0]; t.y = v[1]; t.z = v[2]; t.w = v[3];
        *reinterpret_cast<float4*>(p) = t;
    } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) p[k] = v[k];
    }
}

// Chan et al.: merge (mean_b, m2_b, cnt_b) into (mean, m2, cnt).
__device__ __forceinline__ void bn_merge(float& mean, float& m2, float& cnt,
                                         float mean_b, float m2_b, float cnt_b)
{
    if (cnt_b == 0.0f) return;
    if (cnt == 0.0f) {
        mean = mean_b; m2 = m2_b; cnt = cnt_b;
        return;
    }
    const float tot = cnt + cnt_b;
    const float delta = mean_b - mean;
    const float fb = cnt_b / tot;
    mean = mean + delta * fb;
    m2 = m2 + m2_b + delta * delta * cnt * fb;
    cnt = tot;
}

template <int VEC>
__device__ __forceinline__ void bn_welford(const float* v, const float* shift, float* mean,
                                           float* m2, float& cnt)
{
    cnt += 1.0f;
    const float inv = 1.0f / cnt;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        const float s = v[k] - shift[k];
        const float d = s - mean[k];
        mean[k] += d * inv;
        m2[k] += d * (s - mean[k]);
    }
}

// ---------------------------------------------------------------------------------------------
// Training forward, pass 1: per-(chunk, column) Welford partials of x - x[0, c].
template <int VEC>
__device__ void batchnorm_forward_train_stats_impl(
    const float* __restrict__ x, int n, int C, int rpc, float* __restrict__ pmean,
    float* __restrict__ pm2)
{
    __shared__ float s_mean[BN_MAX_THREADS * 4];
    __shared__ float s_m2[BN_MAX_THREADS * 4];
    __shared__ float s_cnt[BN_MAX_THREADS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int bdx = blockDim.x, bdy = blockDim.y;
    const int col0 = (blockIdx.x * bdx + tx) * VEC;
    const bool active = col0 < C;
    const int chunk = blockIdx.y;
    const int rb = chunk * rpc;
    const int re = (rb + rpc < n) ? rb + rpc : n;

    float mean[VEC], m2[VEC], shift[VEC];
    float cnt = 0.0f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) { mean[k] = 0.0f; m2[k] = 0.0f; shift[k] = 0.0f; }

    if (active) {
        bn_load<VEC>(x + col0, shift);
        const long long ldc = C;
        int r = rb + ty;
        for (; r + 3 * bdy < re; r += 4 * bdy) {
            float v0[VEC], v1[VEC], v2[VEC], v3[VEC];
            bn_load<VEC>(x + (long long)r * ldc + col0, v0);
            bn_load<VEC>(x + (long long)(r + bdy) * ldc + col0, v1);
            bn_load<VEC>(x + (long long)(r + 2 * bdy) * ldc + col0, v2);
            bn_load<VEC>(x + (long long)(r + 3 * bdy) * ldc + col0, v3);
            bn_welford<VEC>(v0, shift, mean, m2, cnt);
            bn_welford<VEC>(v1, shift, mean, m2, cnt);
            bn_welford<VEC>(v2, shift, mean, m2, cnt);
            bn_welford<VEC>(v3, shift, mean, m2, cnt);
        }
        for (; r < re; r += bdy) {
            float v0[VEC];
            bn_load<VEC>(x + (long long)r * ldc + col0, v0);
            bn_welford<VEC>(v0, shift, mean, m2, cnt);
        }
    }

    const int tid = ty * bdx + tx;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        s_mean[tid * VEC + k] = mean[k];
        s_m2[tid * VEC + k] = m2[k];
    }
    s_cnt[tid] = cnt;
    __syncthreads();
    if (ty == 0 && active) {
        for (int j = 1; j < bdy; ++j) {
            const int o = j * bdx + tx;
            const float cb = s_cnt[o];
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                float c = cnt;
                bn_merge(mean[k], m2[k], c, s_mean[o * VEC + k], s_m2[o * VEC + k], cb);
            }
            if (cb != 0.0f) cnt += cb;
        }
        const long long base = (long long)chunk * C + col0;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            pmean[base + k] = mean[k];
            pm2[base + k] = m2[k];
        }
    }
}

extern "C" __global__ void batchnorm_forward_train_stats_v1(
    const float* __restrict__ x, int n, int C, int rpc, float* __restrict__ pmean,
    float* __restrict__ pm2)
{
    batchnorm_forward_train_stats_impl<1>(x, n, C, rpc, pmean, pm2);
}

extern "C" __global__ void batchnorm_forward_train_stats_v4(
    const float* __restrict__ x, int n, int C, int rpc, float* __restrict__ pmean,
    float* __restrict__ pm2)
{
    batchnorm_forward_train_stats_impl<4>(x, n, C, rpc, pmean, pm2);
}

// Training forward, pass 2 (one thread per column): merge the chunk partials in chunk order,
// write mean, invstd, the shifted mean and gamma * invstd, update the running statistics:
// running = running * (1 - momentum) + momentum * stat, the variance unbiased by n / (n - 1)
// (unbias_m = momentum * n / (n - 1), computed on the host as the reference does).
__device__ __forceinline__ void batchnorm_forward_train_finish_body(
    int c, const float* __restrict__ x, const float* __restrict__ pmean,
    const float* __restrict__ pm2, int nchunks, int rpc, int n, int C,
    const float* __restrict__ gamma, float eps, float momentum, float one_minus_m,
    float unbias_m, float* __restrict__ mean_out, float* __restrict__ invstd_out,
    float* __restrict__ dmean_out, float* __restrict__ scale_out,
    float* __restrict__ running_mean, float* __restrict__ running_var)
{
    float mean = 0.0f, m2 = 0.0f, cnt = 0.0f;
    for (int k = 0; k < nchunks; ++k) {
        const int left = n - k * rpc;
        const float cb = (float)(left < rpc ? left : rpc);
        const long long o = (long long)k * C + c;
        bn_merge(mean, m2, cnt, pmean[o], pm2[o], cb);
    }
    const float var = m2 / (float)n;
    const float invstd = 1.0f / sqrtf(var + eps);
    const float full_mean = x[c] + mean;
    mean_out[c] = full_mean;
    invstd_out[c] = invstd;
    dmean_out[c] = mean;
    scale_out[c] = invstd * gamma[c];
    running_mean[c] = running_mean[c] * one_minus_m + momentum * full_mean;
    running_var[c] = running_var[c] * one_minus_m + unbias_m * var;
}

extern "C" __global__ void batchnorm_forward_train_finish(const float* __restrict__ x,
                                           const float* __restrict__ pmean,
                                           const float* __restrict__ pm2, int nchunks, int rpc,
                                           int n, int C, const float* __restrict__ gamma,
                                           float eps, float momentum, float one_minus_m,
                                           float unbias_m, float* __restrict__ mean_out,
                                           float* __restrict__ invstd_out,
                                           float* __restrict__ dmean_out,
                                           float* __restrict__ scale_out,
                                           float* __restrict__ running_mean,
                                           float* __restrict__ running_var)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    batchnorm_forward_train_finish_body(c, x, pmean, pm2, nchunks, rpc, n, C, gamma, eps,
                                        momentum, one_minus_m, unbias_m, mean_out, invstd_out,
                                        dmean_out, scale_out, running_mean, running_var);
}

// The same with a momentum per column (a packed model's members, each momentum repeated over
// its member's columns), read from device memory; the constants are rounded from double as
// the host rounds them for the scalar kernel, so a column gets the bits the scalar kernel
// gives it with that momentum.
extern "C" __global__ void batchnorm_forward_train_finish_colmomentum(
    const float* __restrict__ x, const float* __restrict__ pmean,
    const float* __restrict__ pm2, int nchunks, int rpc, int n, int C,
    const float* __restrict__ gamma, float eps, const float* __restrict__ momentum,
    float* __restrict__ mean_out, float* __restrict__ invstd_out,
    float* __restrict__ dmean_out, float* __restrict__ scale_out,
    float* __restrict__ running_mean, float* __restrict__ running_var)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const double m = (double)momentum[c];
    batchnorm_forward_train_finish_body(c, x, pmean, pm2, nchunks, rpc, n, C, gamma, eps,
                                        (float)m, (float)(1.0 - m),
                                        (float)(m * (double)n / (double)(n - 1)), mean_out,
                                        invstd_out, dmean_out, scale_out, running_mean,
                                        running_var);
}

// Training forward, pass 3: y = ((x - K) - mean_shifted) * (gamma * invstd) + beta [, ReLU].
template <int VEC>
__device__ void batchnorm_forward_train_apply_impl(
    const float* __restrict__ x, int n, int C, int rpc, const float* __restrict__ dmean,
    const float* __restrict__ scale, const float* __restrict__ beta, int relu,
    float* __restrict__ y)
{
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col0 = (blockIdx.x * blockDim.x + tx) * VEC;
    if (col0 >= C) return;
    const int bdy = blockDim.y;
    const int chunk = gridDim.y - 1 - blockIdx.y;
    const int rb = chunk * rpc;
    const int re = (rb + rpc < n) ? rb + rpc : n;
    float sh[VEC], dm[VEC], sc[VEC], b[VEC];
    bn_load<VEC>(x + col0, sh);
    bn_load<VEC>(dmean + col0, dm);
    bn_load<VEC>(scale + col0, sc);
    bn_load<VEC>(beta + col0, b);
    const long long ldc = C;
    int r = rb + ty;
    for (; r + bdy < re; r += 2 * bdy) {
        float v0[VEC], v1[VEC];
        const long long o0 = (long long)r * ldc + col0, o1 = o0 + (long long)bdy * ldc;
        bn_load<VEC>(x + o0, v0);
        bn_load<VEC>(x + o1, v1);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float t0 = ((v0[k] - sh[k]) - dm[k]) * sc[k] + b[k];
            float t1 = ((v1[k] - sh[k]) - dm[k]) * sc[k] + b[k];
            if (relu) { t0 = t0 > 0.0f ? t0 : 0.0f; t1 = t1 > 0.0f ? t1 : 0.0f; }
            v0[k] = t0; v1[k] = t1;
        }
        bn_store<VEC>(y + o0, v0);
        bn_store<VEC>(y + o1, v1);
    }
    if (r < re) {
        float v0[VEC];
        const long long o0 = (long long)r * ldc + col0;
        bn_load<VEC>(x + o0, v0);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float t0 = ((v0[k] - sh[k]) - dm[k]) * sc[k] + b[k];
            if (relu) t0 = t0 > 0.0f ? t0 : 0.0f;
            v0[k] = t0;
        }
        bn_store<VEC>(y + o0, v0);
    }
}

extern "C" __global__ void batchnorm_forward_train_apply_v1(
    const float* __restrict__ x, int n, int C, int rpc, const float* __restrict__ dmean,
    const float* __restrict__ scale, const float* __restrict__ beta, int relu,
    float* __restrict__ y)
{
    batchnorm_forward_train_apply_impl<1>(x, n, C, rpc, dmean, scale, beta, relu, y);
}

extern "C" __global__ void batchnorm_forward_train_apply_v4(
    const float* __restrict__ x, int n, int C, int rpc, const float* __restrict__ dmean,
    const float* __restrict__ scale, const float* __restrict__ beta, int relu,
    float* __restrict__ y)
{
    batchnorm_forward_train_apply_impl<4>(x, n, C, rpc, dmean, scale, beta, relu, y);
}

// ---------------------------------------------------------------------------------------------
// Inference forward: y = (x - running_mean) * (gamma / sqrt(running_var + eps)) + beta [, ReLU].
template <int VEC>
__device__ void batchnorm_forward_infer_impl(const float* __restrict__ x, int n, int C, int rpc,
                              const float* __restrict__ gamma, const float* __restrict__ beta,
                              const float* __restrict__ rmean, const float* __restrict__ rvar,
                              float eps, int relu, float* __restrict__ y)
{
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col0 = (blockIdx.x * blockDim.x + tx) * VEC;
    if (col0 >= C) return;
    const int bdy = blockDim.y;
    const int chunk = blockIdx.y;
    const int rb = chunk * rpc;
    const int re = (rb + rpc < n) ? rb + rpc : n;
    float rm[VEC], sc[VEC], b[VEC], g[VEC];
    bn_load<VEC>(rmean + col0, rm);
    bn_load<VEC>(rvar + col0, sc);
    bn_load<VEC>(gamma + col0, g);
    bn_load<VEC>(beta + col0, b);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sc[k] = g[k] / sqrtf(sc[k] + eps);
    const long long ldc = C;
    int r = rb + ty;
    for (; r + bdy < re; r += 2 * bdy) {
        float v0[VEC], v1[VEC];
        const long long o0 = (long long)r * ldc + col0, o1 = o0 + (long long)bdy * ldc;
        bn_load<VEC>(x + o0, v0);
        bn_load<VEC>(x + o1, v1);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float t0 = (v0[k] - rm[k]) * sc[k] + b[k];
            float t1 = (v1[k] - rm[k]) * sc[k] + b[k];
            if (relu) { t0 = t0 > 0.0f ? t0 : 0.0f; t1 = t1 > 0.0f ? t1 : 0.0f; }
            v0[k] = t0; v1[k] = t1;
        }
        bn_store<VEC>(y + o0, v0);
        bn_store<VEC>(y + o1, v1);
    }
    if (r < re) {
        float v0[VEC];
        const long long o0 = (long long)r * ldc + col0;
        bn_load<VEC>(x + o0, v0);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            float t0 = (v0[k] - rm[k]) * sc[k] + b[k];
            if (relu) t0 = t0 > 0.0f ? t0 : 0.0f;
            v0[k] = t0;
        }
        bn_store<VEC>(y + o0, v0);
    }
}

extern "C" __global__ void batchnorm_forward_infer_v1(
    const float* __restrict__ x, int n, int C, int rpc, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ rmean,
    const float* __restrict__ rvar, float eps, int relu, float* __restrict__ y)
{
    batchnorm_forward_infer_impl<1>(x, n, C, rpc, gamma, beta, rmean, rvar, eps, relu, y);
}

extern "C" __global__ void batchnorm_forward_infer_v4(
    const float* __restrict__ x, int n, int C, int rpc, const float* __restrict__ gamma,
    const float* __restrict__ beta, const float* __restrict__ rmean,
    const float* __restrict__ rvar, float eps, int relu, float* __restrict__ y)
{
    batchnorm_forward_infer_impl<4>(x, n, C, rpc, gamma, beta, rmean, rvar, eps, relu, y);
}

// ---------------------------------------------------------------------------------------------
// Backward, pass 1: per-(chunk, column) partial sums of g and g * (x - mean), where g = dy,
// masked by y > 0 when has_y (the fused-ReLU output).  `y` must point at a valid buffer even
// when has_y is 0 (it is not read then).
template <int VEC>
__device__ void batchnorm_backward_reduce_impl(
    const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ y,
    int has_y, int n, int C, int rpc, const float* __restrict__ mean,
    float* __restrict__ psum_g, float* __restrict__ psum_gx)
{
    __shared__ float s_g[BN_MAX_THREADS * 4];
    __shared__ float s_gx[BN_MAX_THREADS * 4];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int bdx = blockDim.x, bdy = blockDim.y;
    const int col0 = (blockIdx.x * bdx + tx) * VEC;
    const bool active = col0 < C;
    const int chunk = blockIdx.y;
    const int rb = chunk * rpc;
    const int re = (rb + rpc < n) ? rb + rpc : n;

    float sg[VEC], sgx[VEC], mu[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) { sg[k] = 0.0f; sgx[k] = 0.0f; mu[k] = 0.0f; }
    if (active) {
        bn_load<VEC>(mean + col0, mu);
        const long long ldc = C;
        int r = rb + ty;
        for (; r + bdy < re; r += 2 * bdy) {
            float g0[VEC], x0[VEC], g1[VEC], x1[VEC];
            const long long o0 = (long long)r * ldc + col0, o1 = o0 + (long long)bdy * ldc;
            bn_load<VEC>(dy + o0, g0);
            bn_load<VEC>(dy + o1, g1);
            bn_load<VEC>(x + o0, x0);
            bn_load<VEC>(x + o1, x1);
            if (has_y) {
                float y0[VEC], y1[VEC];
                bn_load<VEC>(y + o0, y0);
                bn_load<VEC>(y + o1, y1);
#pragma unroll
                for (int k = 0; k < VEC; ++k) {
                    g0[k] = y0[k] > 0.0f ? g0[k] : 0.0f;
                    g1[k] = y1[k] > 0.0f ? g1[k] : 0.0f;
                }
            }
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                sg[k] += g0[k];
                sgx[k] += g0[k] * (x0[k] - mu[k]);
                sg[k] += g1[k];
                sgx[k] += g1[k] * (x1[k] - mu[k]);
            }
        }
        if (r < re) {
            float g0[VEC], x0[VEC];
            const long long o0 = (long long)r * ldc + col0;
            bn_load<VEC>(dy + o0, g0);
            bn_load<VEC>(x + o0, x0);
            if (has_y) {
                float y0[VEC];
                bn_load<VEC>(y + o0, y0);
#pragma unroll
                for (int k = 0; k < VEC; ++k) g0[k] = y0[k] > 0.0f ? g0[k] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                sg[k] += g0[k];
                sgx[k] += g0[k] * (x0[k] - mu[k]);
            }
        }
    }
    const int tid = ty * bdx + tx;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
        s_g[tid * VEC + k] = sg[k];
        s_gx[tid * VEC + k] = sgx[k];
    }
    __syncthreads();
    if (ty == 0 && active) {
        for (int j = 1; j < bdy; ++j) {
            const int o = (j * bdx + tx) * VEC;
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
                sg[k] += s_g[o + k];
                sgx[k] += s_gx[o + k];
            }
        }
        const long long base = (long long)chunk * C + col0;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            psum_g[base + k] = sg[k];
            psum_gx[base + k] = sgx[k];
        }
    }
}

extern "C" __global__ void batchnorm_backward_reduce_v1(const float* __restrict__ dy,
                                            const float* __restrict__ x,
                                            const float* __restrict__ y, int has_y, int n, int C,
                                            int rpc, const float* __restrict__ mean,
                                            float* __restrict__ psum_g,
                                            float* __restrict__ psum_gx)
{
    batchnorm_backward_reduce_impl<1>(dy, x, y, has_y, n, C, rpc, mean, psum_g, psum_gx);
}

extern "C" __global__ void batchnorm_backward_reduce_v4(const float* __restrict__ dy,
                                            const float* __restrict__ x,
                                            const float* __restrict__ y, int has_y, int n, int C,
                                            int rpc, const float* __restrict__ mean,
                                            float* __restrict__ psum_g,
                                            float* __restrict__ psum_gx)
{
    batchnorm_backward_reduce_impl<4>(dy, x, y, has_y, n, C, rpc, mean, psum_g, psum_gx);
}

// Backward, pass 2 (one thread per column): dbeta = sum g, dgamma = invstd * sum g (x - mean),
// coef = gamma * invstd / n, summing the chunk partials in chunk order.
extern "C" __global__ void batchnorm_backward_finish(const float* __restrict__ psum_g,
                                         const float* __restrict__ psum_gx, int nchunks, int C,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ invstd, float fn,
                                         float* __restrict__ dgamma, float* __restrict__ dbeta,
                                         float* __restrict__ coef)
{
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sg = 0.0f, sgx = 0.0f;
    for (int k = 0; k < nchunks; ++k) {
        const long long o = (long long)k * C + c;
        sg += psum_g[o];
        sgx += psum_gx[o];
    }
    const float is = invstd[c];
    dbeta[c] = sg;
    dgamma[c] = sgx * is;
    coef[c] = gamma[c] * is / fn;
}

// Backward, pass 3: dx = coef * ((n * g - x_hat * dgamma) - dbeta), x_hat = (x - mean) * invstd.
template <int VEC>
__device__ void batchnorm_backward_apply_impl(
    const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ y,
    int has_y, int n, int C, int rpc, const float* __restrict__ mean,
    const float* __restrict__ invstd, const float* __restrict__ dgamma,
    const float* __restrict__ dbeta, const float* __restrict__ coef, float fn,
    float* __restrict__ dx)
{
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int col0 = (blockIdx.x * blockDim.x + tx) * VEC;
    if (col0 >= C) return;
    const int bdy = blockDim.y;
    const int chunk = gridDim.y - 1 - blockIdx.y;
    const int rb = chunk * rpc;
    const int re = (rb + rpc < n) ? rb + rpc : n;
    float mu[VEC], is[VEC], dg[VEC], db[VEC], cf[VEC];
    bn_load<VEC>(mean + col0, mu);
    bn_load<VEC>(invstd + col0, is);
    bn_load<VEC>(dgamma + col0, dg);
    bn_load<VEC>(dbeta + col0, db);
    bn_load<VEC>(coef + col0, cf);
    const long long ldc = C;
    for (int r = rb + ty; r < re; r += bdy) {
        float g0[VEC], x0[VEC];
        const long long o0 = (long long)r * ldc + col0;
        bn_load<VEC>(dy + o0, g0);
        bn_load<VEC>(x + o0, x0);
        if (has_y) {
            float y0[VEC];
            bn_load<VEC>(y + o0, y0);
#pragma unroll
            for (int k = 0; k < VEC; ++k) g0[k] = y0[k] > 0.0f ? g0[k] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
            const float xh = (x0[k] - mu[k]) * is[k];
            g0[k] = cf[k] * ((fn * g0[k] - xh * dg[k]) - db[k]);
        }
        bn_store<VEC>(dx + o0, g0);
    }
}

extern "C" __global__ void batchnorm_backward_apply_v1(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ y, int has_y, int n, int C,
                                           int rpc, const float* __restrict__ mean,
                                           const float* __restrict__ invstd,
                                           const float* __restrict__ dgamma,
                                           const float* __restrict__ dbeta,
                                           const float* __restrict__ coef, float fn,
                                           float* __restrict__ dx)
{
    batchnorm_backward_apply_impl<1>(dy, x, y, has_y, n, C, rpc, mean, invstd, dgamma, dbeta,
                                     coef, fn, dx);
}

extern "C" __global__ void batchnorm_backward_apply_v4(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ y, int has_y, int n, int C,
                                           int rpc, const float* __restrict__ mean,
                                           const float* __restrict__ invstd,
                                           const float* __restrict__ dgamma,
                                           const float* __restrict__ dbeta,
                                           const float* __restrict__ coef, float fn,
                                           float* __restrict__ dx)
{
    batchnorm_backward_apply_impl<4>(dy, x, y, has_y, n, C, rpc, mean, invstd, dgamma, dbeta,
                                     coef, fn, dx);
}
