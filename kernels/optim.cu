// Optimizer updates over the flat float32 parameter buffer: one elementwise launch per step.
//
// Plain CUDA C++ with no toolkit headers (NVRTC via CuPy, nvcc in the tests, the host C++
// compiler under tests/cuda_emu).  The formulas of the reference, gpunet/backend/base.py:
//
//   decay_mode 0: g' = g;  1: g' = g + decay * w;  2: g' = g + (decay * mask[i]) * w
//   (mask points at a valid buffer in every mode; it is read only in mode 2)
//   SGD:      w -= lr * g'
//   Momentum: v = v * beta + (1 - beta) * g';  w -= lr * v
//   RMSprop:  s = s * beta2 + (1 - beta2) * g'^2;  w -= lr * g' / (sqrt(s) + eps)
//   Adam:     m = m * beta1 + (1 - beta1) * g';  v = v * beta2 + (1 - beta2) * g'^2;
//             w -= lr_c1 * m / (sqrt(v / c2) + eps),  lr_c1 = lr / (1 - beta1^t),
//             c2 = 1 - beta2^t  (both computed on the host in double, passed as float32)
//
// Each thread walks the buffer with a grid stride; n is a 64-bit count.
//
// Device-scalar variants (suffix _dev) read the step's scalars from device memory, so that a
// captured CUDA graph replays with the current values: sc[0] is lr (Adam: lr_c1) and sc[1] is
// c2, written by optimizer_scalars, which also advances the device step counter. The _dev
// kernels share their bodies with the host-scalar kernels: the same scalars give the same bits.
// Kernel names are the backend ops' (docs/architecture.md, "Op table").

__device__ __forceinline__ float opt_grad(const float* __restrict__ g,
                                          const float* __restrict__ w,
                                          const float* __restrict__ mask, long long i,
                                          float decay, int decay_mode)
{
    const float gi = g[i];
    if (decay_mode == 1) return gi + decay * w[i];
    if (decay_mode == 2) return gi + (decay * mask[i]) * w[i];
    return gi;
}

__device__ __forceinline__ void sgd_body(float* __restrict__ w, const float* __restrict__ g,
                                         const float* __restrict__ mask, long long n, float lr,
                                         float decay, int decay_mode)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gi = opt_grad(g, w, mask, i, decay, decay_mode);
        w[i] = w[i] - lr * gi;
    }
}

__device__ __forceinline__ void momentum_body(float* __restrict__ w,
                                              const float* __restrict__ g,
                                              float* __restrict__ v,
                                              const float* __restrict__ mask, long long n,
                                              float lr, float beta, float one_minus_beta,
                                              float decay, int decay_mode)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gi = opt_grad(g, w, mask, i, decay, decay_mode);
        const float vi = v[i] * beta + one_minus_beta * gi;
        v[i] = vi;
        w[i] = w[i] - lr * vi;
    }
}

__device__ __forceinline__ void rmsprop_body(float* __restrict__ w, const float* __restrict__ g,
                                             float* __restrict__ s,
                                             const float* __restrict__ mask, long long n,
                                             float lr, float beta2, float one_minus_beta2,
                                             float eps, float decay, int decay_mode)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gi = opt_grad(g, w, mask, i, decay, decay_mode);
        const float si = s[i] * beta2 + one_minus_beta2 * (gi * gi);
        s[i] = si;
        w[i] = w[i] - (lr * gi) / (sqrtf(si) + eps);
    }
}

__device__ __forceinline__ void adam_body(float* __restrict__ w, const float* __restrict__ g,
                                          float* __restrict__ m, float* __restrict__ v,
                                          const float* __restrict__ mask, long long n,
                                          float lr_c1, float beta1, float one_minus_beta1,
                                          float beta2, float one_minus_beta2, float c2,
                                          float eps, float decay, int decay_mode)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float gi = opt_grad(g, w, mask, i, decay, decay_mode);
        const float mi = m[i] * beta1 + one_minus_beta1 * gi;
        const float vi = v[i] * beta2 + one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] - (lr_c1 * mi) / (sqrtf(vi / c2) + eps);
    }
}

// ---------------------------------------------------------------- host scalars
extern "C" __global__ void sgd_update(float* __restrict__ w, const float* __restrict__ g,
                                      const float* __restrict__ mask, long long n, float lr,
                                      float decay, int decay_mode)
{
    sgd_body(w, g, mask, n, lr, decay, decay_mode);
}

extern "C" __global__ void momentum_update(float* __restrict__ w, const float* __restrict__ g,
                                           float* __restrict__ v,
                                           const float* __restrict__ mask, long long n,
                                           float lr, float beta, float one_minus_beta,
                                           float decay, int decay_mode)
{
    momentum_body(w, g, v, mask, n, lr, beta, one_minus_beta, decay, decay_mode);
}

extern "C" __global__ void rmsprop_update(float* __restrict__ w, const float* __restrict__ g,
                                          float* __restrict__ s,
                                          const float* __restrict__ mask, long long n,
                                          float lr, float beta2, float one_minus_beta2,
                                          float eps, float decay, int decay_mode)
{
    rmsprop_body(w, g, s, mask, n, lr, beta2, one_minus_beta2, eps, decay, decay_mode);
}

extern "C" __global__ void adam_update(float* __restrict__ w, const float* __restrict__ g,
                                       float* __restrict__ m, float* __restrict__ v,
                                       const float* __restrict__ mask, long long n, float lr_c1,
                                       float beta1, float one_minus_beta1, float beta2,
                                       float one_minus_beta2, float c2, float eps, float decay,
                                       int decay_mode)
{
    adam_body(w, g, m, v, mask, n, lr_c1, beta1, one_minus_beta1, beta2, one_minus_beta2, c2,
              eps, decay, decay_mode);
}

// ---------------------------------------------------------------- device scalars
// One thread: t += 1; sc[0] = lr / (1 - beta1^t), sc[1] = 1 - beta2^t, in double as the host
// computes them (beta = 0 gives a factor of exactly 1: SGD, Momentum, RMSprop).
extern "C" __global__ void optimizer_scalars(
    long long* __restrict__ t, const double* __restrict__ lr, float* __restrict__ sc,
    double beta1, double beta2)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const long long step = t[0] + 1;
    t[0] = step;
    const double c1 = beta1 > 0.0 ? 1.0 - pow(beta1, (double)step) : 1.0;
    const double c2 = beta2 > 0.0 ? 1.0 - pow(beta2, (double)step) : 1.0;
    sc[0] = (float)(lr[0] / c1);
    sc[1] = (float)c2;
}

extern "C" __global__ void sgd_update_dev(float* __restrict__ w, const float* __restrict__ g,
                                          const float* __restrict__ mask, long long n,
                                          const float* __restrict__ sc, float decay,
                                          int decay_mode)
{
    sgd_body(w, g, mask, n, sc[0], decay, decay_mode);
}

extern "C" __global__ void momentum_update_dev(float* __restrict__ w,
                                               const float* __restrict__ g,
                                               float* __restrict__ v,
                                               const float* __restrict__ mask, long long n,
                                               const float* __restrict__ sc, float beta,
                                               float one_minus_beta, float decay, int decay_mode)
{
    momentum_body(w, g, v, mask, n, sc[0], beta, one_minus_beta, decay, decay_mode);
}

extern "C" __global__ void rmsprop_update_dev(float* __restrict__ w,
                                              const float* __restrict__ g,
                                              float* __restrict__ s,
                                              const float* __restrict__ mask, long long n,
                                              const float* __restrict__ sc, float beta2,
                                              float one_minus_beta2, float eps, float decay,
                                              int decay_mode)
{
    rmsprop_body(w, g, s, mask, n, sc[0], beta2, one_minus_beta2, eps, decay, decay_mode);
}

extern "C" __global__ void adam_update_dev(float* __restrict__ w, const float* __restrict__ g,
                                           float* __restrict__ m, float* __restrict__ v,
                                           const float* __restrict__ mask, long long n,
                                           const float* __restrict__ sc, float beta1,
                                           float one_minus_beta1, float beta2,
                                           float one_minus_beta2, float eps, float decay,
                                           int decay_mode)
{
    adam_body(w, g, m, v, mask, n, sc[0], beta1, one_minus_beta1, beta2, one_minus_beta2,
              sc[1], eps, decay, decay_mode);
}

// ---------------------------------------------------------------- packed members
// K members' flat vectors as the rows of (K, P) arrays; grid (blocks, K): blockIdx.y is the
// member, whose scalars are read from device arrays (lr, betas, eps, decay: float32 (K,);
// Adam's lr_c1 and c2 from adam_update_packed_scalars), so a captured CUDA graph replays with
// the values written there. A member whose active[k] is false (has_active) is not touched.
// Each member runs the single kernels' body over its row with its own scalars (1 - beta in
// float32 is 1 - beta in double rounded once, as the host rounds it): a row gets the bits the
// single kernel gives that member. decay_mask (P,) is shared (has_mask), else mask is any
// valid pointer; a member's decay of 0 skips the decay term, as the host does.

__device__ __forceinline__ int packed_decay_mode(float decay, int has_mask)
{
    return decay == 0.0f ? 0 : (has_mask ? 2 : 1);
}

__device__ __forceinline__ bool packed_skip(const bool* __restrict__ active, int has_active)
{
    return has_active && !active[blockIdx.y];
}

extern "C" __global__ void sgd_update_packed(float* __restrict__ w, const float* __restrict__ g,
                                             const float* __restrict__ mask, long long P,
                                             const float* __restrict__ lr,
                                             const float* __restrict__ decay, int has_mask,
                                             const bool* __restrict__ active, int has_active)
{
    if (packed_skip(active, has_active)) return;
    const int k = blockIdx.y;
    const long long o = (long long)k * P;
    sgd_body(w + o, g + o, mask, P, lr[k], decay[k], packed_decay_mode(decay[k], has_mask));
}

extern "C" __global__ void momentum_update_packed(float* __restrict__ w,
                                                  const float* __restrict__ g,
                                                  float* __restrict__ v,
                                                  const float* __restrict__ mask, long long P,
                                                  const float* __restrict__ lr,
                                                  const float* __restrict__ beta,
                                                  const float* __restrict__ decay, int has_mask,
                                                  const bool* __restrict__ active,
                                                  int has_active)
{
    if (packed_skip(active, has_active)) return;
    const int k = blockIdx.y;
    const long long o = (long long)k * P;
    const float b = beta[k];
    momentum_body(w + o, g + o, v + o, mask, P, lr[k], b, 1.0f - b, decay[k],
                  packed_decay_mode(decay[k], has_mask));
}

extern "C" __global__ void rmsprop_update_packed(float* __restrict__ w,
                                                 const float* __restrict__ g,
                                                 float* __restrict__ s,
                                                 const float* __restrict__ mask, long long P,
                                                 const float* __restrict__ lr,
                                                 const float* __restrict__ beta2,
                                                 const float* __restrict__ eps,
                                                 const float* __restrict__ decay, int has_mask,
                                                 const bool* __restrict__ active,
                                                 int has_active)
{
    if (packed_skip(active, has_active)) return;
    const int k = blockIdx.y;
    const long long o = (long long)k * P;
    const float b2 = beta2[k];
    rmsprop_body(w + o, g + o, s + o, mask, P, lr[k], b2, 1.0f - b2, eps[k], decay[k],
                 packed_decay_mode(decay[k], has_mask));
}

// Per member k (one thread each): sc[2k] = lr[k] / (1 - beta1[k]^t[k]),
// sc[2k + 1] = 1 - beta2[k]^t[k], in double, as the host computes them for adam_update.
extern "C" __global__ void adam_update_packed_scalars(const float* __restrict__ lr,
                                                      const float* __restrict__ beta1,
                                                      const float* __restrict__ beta2,
                                                      const long long* __restrict__ t, int K,
                                                      float* __restrict__ sc)
{
    const int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const double step = (double)t[k];
    const double c1 = 1.0 - pow((double)beta1[k], step);
    sc[2 * k] = (float)((double)lr[k] / c1);
    sc[2 * k + 1] = (float)(1.0 - pow((double)beta2[k], step));
}

extern "C" __global__ void adam_update_packed(float* __restrict__ w, const float* __restrict__ g,
                                              float* __restrict__ m, float* __restrict__ v,
                                              const float* __restrict__ mask, long long P,
                                              const float* __restrict__ sc,
                                              const float* __restrict__ beta1,
                                              const float* __restrict__ beta2,
                                              const float* __restrict__ eps,
                                              const float* __restrict__ decay, int has_mask,
                                              const bool* __restrict__ active, int has_active)
{
    if (packed_skip(active, has_active)) return;
    const int k = blockIdx.y;
    const long long o = (long long)k * P;
    const float b1 = beta1[k], b2 = beta2[k];
    adam_body(w + o, g + o, m + o, v + o, mask, P, sc[2 * k], b1, 1.0f - b1, b2, 1.0f - b2,
              sc[2 * k + 1], eps[k], decay[k], packed_decay_mode(decay[k], has_mask));
}
