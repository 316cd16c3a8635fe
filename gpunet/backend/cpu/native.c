/* gpunet's native CPU kernels: batch norm and the optimizer updates in one pass each.
 *
 * Compiled on first use by gpunet/backend/cpu/native.py with the system C compiler
 * (cc -O3 -march=native -ffp-contract=off) and called through ctypes, which releases the GIL:
 * the NumPy backend shares each call's columns (batch norm) or rows and columns (optimizers)
 * among its threads. Every kernel computes the formula of the reference op in
 * gpunet/backend/base.py; sums and batch-norm arithmetic are in double, as the reference's.
 *
 * Arrays are row-major float32 with a row stride ("ld", in elements) and unit column stride;
 * a kernel works on the columns [c0, c1) (and rows [r0, r1)) it is given, so that calls on
 * disjoint ranges may run at the same time. No kernel allocates.
 */
#include <math.h>
#include <stdint.h>

#define BLOCK 256 /* columns per block: the per-column double accumulators stay in L1 */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Training-mode batch norm over the n rows of columns [c0, c1) (base.py's
 * batchnorm_forward_train): mean = sum(x) / n, var = sum((x - mean)^2) / n (two passes,
 * double), invstd = 1 / sqrt(var + eps), y = (x - mean) * invstd * gamma + beta, then
 * max(y, 0) with relu; mask (if not NULL) receives y > 0. Running statistics, per column
 * momentum m: rm = (1 - m) rm + m mean, rv = (1 - m) rv + m var n / (n - 1).
 * centre (if not NULL, and it may be x itself) receives the float32 d = x - mean, and
 * mean_out then holds the mean of those d (the in-place contract), else the batch mean. */
void gn_bn_forward_train(int64_t n, int64_t c0, int64_t c1, const float *x, int64_t ldx,
                         float *y, int64_t ldy, float *centre, int64_t ldc,
                         const float *gamma, const float *beta, float *rmean, float *rvar,
                         const float *momentum, double eps, int relu, uint8_t *mask,
                         int64_t ldm, double *mean_out, float *invstd_out)
{
    double s[BLOCK], q[BLOCK], mu[BLOCK], sc[BLOCK], sh[BLOCK];
    for (int64_t cb = c0; cb < c1; cb += BLOCK) {
        const int64_t w = min64(BLOCK, c1 - cb);
        for (int64_t j = 0; j < w; j++) s[j] = q[j] = 0.0;
        for (int64_t r = 0; r < n; r++) {
            const float *xr = x + r * ldx + cb;
            for (int64_t j = 0; j < w; j++) s[j] += (double)xr[j];
        }
        for (int64_t j = 0; j < w; j++) mu[j] = s[j] / (double)n;
        for (int64_t r = 0; r < n; r++) {
            const float *xr = x + r * ldx + cb;
            for (int64_t j = 0; j < w; j++) {
                const double d = (double)xr[j] - mu[j];
                q[j] += d * d;
            }
        }
        for (int64_t j = 0; j < w; j++) {
            const int64_t c = cb + j;
            const double var = q[j] / (double)n;
            const double inv = 1.0 / sqrt(var + eps);
            const double m = (double)momentum[c];
            const double keep = (double)(1.0f - momentum[c]);
            invstd_out[c] = (float)inv;
            sc[j] = inv * (double)gamma[c];
            sh[j] = (double)beta[c];
            rmean[c] = (float)(keep * (double)rmean[c] + m * mu[j]);
            rvar[c] = (float)(keep * (double)rvar[c] + m * var * (double)n / (double)(n - 1));
            s[j] = 0.0;
        }
        for (int64_t r = 0; r < n; r++) {
            const float *xr = x + r * ldx + cb;
            float *yr = y + r * ldy + cb;
            float dc[BLOCK];
            for (int64_t j = 0; j < w; j++) {
                const double d = (double)xr[j] - mu[j];
                dc[j] = (float)d;
                yr[j] = (float)(d * sc[j] + sh[j]);
            }
            if (relu) /* max(y, 0) that keeps a NaN, as the reference's maximum does */
                for (int64_t j = 0; j < w; j++) yr[j] = yr[j] < 0.0f ? 0.0f : yr[j];
            if (mask) {
                uint8_t *mr = mask + r * ldm + cb;
                for (int64_t j = 0; j < w; j++) mr[j] = yr[j] > 0.0f;
            }
            if (centre) {
                float *cr = centre + r * ldc + cb;
                for (int64_t j = 0; j < w; j++) {
                    cr[j] = dc[j];
                    s[j] += (double)dc[j];
                }
            }
        }
        for (int64_t j = 0; j < w; j++) mean_out[cb + j] = centre ? s[j] / (double)n : mu[j];
    }
}

/* The gradient entering batch norm: dy, masked by the fused ReLU (mask != 0, or y > 0). */
static inline void masked_row(int64_t w, const float *dyr, const uint8_t *mr, const float *yr,
                              float *g)
{
    if (mr)
        for (int64_t j = 0; j < w; j++) g[j] = mr[j] ? dyr[j] : 0.0f;
    else if (yr)
        for (int64_t j = 0; j < w; j++) g[j] = yr[j] > 0.0f ? dyr[j] : 0.0f;
    else
        for (int64_t j = 0; j < w; j++) g[j] = dyr[j];
}

/* Backward of training-mode batch norm over columns [c0, c1) (base.py's
 * batchnorm_backward): g = dy (times the ReLU mask), x_hat = (x - mean) * invstd,
 * dbeta = sum(g), dgamma = sum(g x_hat) (double), dx = gamma invstd (g - dbeta / n -
 * x_hat dgamma / n). dx may be x or dy (each element is read before it is written). */
void gn_bn_backward(int64_t n, int64_t c0, int64_t c1, const float *dy, int64_t lddy,
                    const float *x, int64_t ldx, const float *gamma, const double *mean,
                    const float *invstd, const uint8_t *mask, int64_t ldm, const float *yrelu,
                    int64_t ldyr, float *dgamma, float *dbeta, float *dx, int64_t lddx)
{
    double sg[BLOCK], sgx[BLOCK], k1[BLOCK], ka[BLOCK], kb[BLOCK], mu[BLOCK], iv[BLOCK];
    for (int64_t cb = c0; cb < c1; cb += BLOCK) {
        const int64_t w = min64(BLOCK, c1 - cb);
        for (int64_t j = 0; j < w; j++) {
            sg[j] = sgx[j] = 0.0;
            mu[j] = mean[cb + j];
            iv[j] = (double)invstd[cb + j];
        }
        for (int64_t r = 0; r < n; r++) {
            const float *dyr = dy + r * lddy + cb, *xr = x + r * ldx + cb;
            const uint8_t *mr = mask ? mask + r * ldm + cb : 0;
            const float *yr = yrelu ? yrelu + r * ldyr + cb : 0;
            float g[BLOCK];
            masked_row(w, dyr, mr, yr, g);
            for (int64_t j = 0; j < w; j++) {
                sg[j] += (double)g[j];
                sgx[j] += (double)g[j] * (((double)xr[j] - mu[j]) * iv[j]);
            }
        }
        for (int64_t j = 0; j < w; j++) {
            const int64_t c = cb + j;
            dbeta[c] = (float)sg[j];
            dgamma[c] = (float)sgx[j];
            k1[j] = (double)gamma[c] * iv[j];
            ka[j] = sg[j] / (double)n;
            kb[j] = sgx[j] / (double)n;
        }
        for (int64_t r = 0; r < n; r++) {
            const float *dyr = dy + r * lddy + cb, *xr = x + r * ldx + cb;
            const uint8_t *mr = mask ? mask + r * ldm + cb : 0;
            const float *yr = yrelu ? yrelu + r * ldyr + cb : 0;
            float *dxr = dx + r * lddx + cb;
            float g[BLOCK];
            masked_row(w, dyr, mr, yr, g);
            for (int64_t j = 0; j < w; j++) {
                const double xh = ((double)xr[j] - mu[j]) * iv[j];
                dxr[j] = (float)(k1[j] * ((double)g[j] - ka[j] - xh * kb[j]));
            }
        }
    }
}

/* The optimizer updates, rows [r0, r1) and columns [p0, p1) of (K, P) arrays, row k with its
 * member's float32 scalars (computed by the host as the NumPy backend's single ops round
 * them): lr (Adam: lr sqrt(c2) / c1), b (beta / beta1 / beta2) and ob = 1 - b, b2 and
 * ob2 = 1 - beta2 (Adam), eps (Adam: eps sqrt(c2)), decay. Rows with active[k] == 0 are
 * left as they are. gd = g + decay * mask * w (g where decay is 0).
 *   kind 0 SGD:      w -= lr gd
 *   kind 1 momentum: v = b v + ob gd;             w -= lr v
 *   kind 2 RMSprop:  s = b s + ob gd^2;           w -= lr gd / (sqrt(s) + eps)
 *   kind 3 Adam:     m = b m + ob gd; v = b2 v + ob2 gd^2; w -= lr m / (sqrt(v) + eps) */
void gn_optimizer_rows(int kind, int64_t P, int64_t r0, int64_t r1, int64_t p0, int64_t p1,
                       float *w, const float *g, float *s1, float *s2, const float *lr,
                       const float *b, const float *ob, const float *b2, const float *ob2,
                       const float *eps, const float *decay, const float *dmask,
                       const uint8_t *active)
{
    for (int64_t k = r0; k < r1; k++) {
        if (active && !active[k]) continue;
        float *wk = w + k * P;
        const float *gk = g + k * P;
        float *ak = s1 ? s1 + k * P : 0, *vk = s2 ? s2 + k * P : 0;
        const float a = lr[k], bk = b ? b[k] : 0.0f, obk = ob ? ob[k] : 0.0f;
        const float b2k = b2 ? b2[k] : 0.0f, ob2k = ob2 ? ob2[k] : 0.0f;
        const float e = eps ? eps[k] : 0.0f, dec = decay[k];
        for (int64_t p = p0; p < p1; p++) {
            float gd = gk[p];
            if (dec != 0.0f) gd = wk[p] * dec * (dmask ? dmask[p] : 1.0f) + gk[p];
            float step;
            if (kind == 0) {
                step = gd * a;
            } else if (kind == 1) {
                const float v = ak[p] * bk + gd * obk;
                ak[p] = v;
                step = v * a;
            } else if (kind == 2) {
                const float s = ak[p] * bk + (gd * gd) * obk;
                ak[p] = s;
                step = gd / (sqrtf(s) + e) * a;
            } else {
                const float m = ak[p] * bk + gd * obk;
                const float v = vk[p] * b2k + (gd * gd) * ob2k;
                ak[p] = m;
                vk[p] = v;
                step = m / (sqrtf(v) + e) * a;
            }
            wk[p] = wk[p] - step;
        }
    }
}
