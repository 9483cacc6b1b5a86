/* One step of the normalised MLP rule (celo) on the CPU in three passes over each tensor, with no
 * per-coordinate feature tensor: see learned_opt/optimizers/fused.py for the formula and the contract.
 *
 *   pass 1  the new momenta and second moments (not stored) and the per-tensor sums of the 19 squared
 *           features, of g * last_dir, last_dir^2 and g * w;
 *   (per tensor) each feature's 1 / RMS folded into the first layer's weights and the skip;
 *   pass 2  the new momenta and second moments (stored), the features, the MLP, the direction d
 *           (stored) and the sums of d^2, of the magnitude output and of d * w;
 *   (per tensor) the output normalisation, the magnitude and the two controllers: u = a * d + b * w;
 *   pass 3  the new parameters and the new last direction.
 *
 * Built for float and for double from the same body (this file includes itself). Sums are taken in
 * blocks of BLOCK coordinates in the tensor's type, then added in double.
 */
#ifndef SCALAR
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define NDECAY 5
#define NRMS 2
#define NFEAT (2 + NDECAY + NRMS * (1 + NDECAY))   /* 19 */
#define NTIME 7
#define NIN (NFEAT + NTIME)                        /* 26 */
#define H1 8
#define H2 8
#define NPTR 20   /* per tensor: g w m0..4 v0..1 last | w_out m_out0..4 v_out0..1 last_out | dbuf */
#define NCTL 3    /* per tensor controller state: log_step, log_radial, last_radial */
#define BLOCK 256
#define EPS 1e-20

#ifdef CELO_PROFILE   /* seconds spent in each pass, summed: celo_profile() reads them */
#include <time.h>
static double prof_t[4], prof_last;
static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
#define PROF(k) { double t_ = now(); if (k) prof_t[k - 1] += t_ - prof_last; prof_last = t_; }
void celo_profile(double *out) { for (int k = 0; k < 4; k++) { out[k] = prof_t[k]; prof_t[k] = 0; } }
#else
#define PROF(k)
#endif

/* cfg layout (doubles) */
enum {
    C_DECAY = 0, C_RMS = C_DECAY + NDECAY, C_TIME = C_RMS + NRMS, C_SCALE = C_TIME + NTIME, C_WDECAY, C_HAS_WD,
    C_OUTPUT_NORM, C_MAGNITUDE, C_HYPER, C_HYPER_GAIN, C_HYPER_LOW, C_HYPER_HIGH, C_HYPER_SHRINK,
    C_RADIAL, C_RADIAL_GAIN, C_RADIAL_RANGE, C_RADIAL_SHRINK, C_SIZE
};
/* weights layout (doubles): W1 (H1 x NIN), b1, W2 (H2 x H1), b2, W3 (2 x H2), b3, skip (NIN) */
enum {
    O_W1 = 0, O_B1 = O_W1 + H1 * NIN, O_W2 = O_B1 + H1, O_B2 = O_W2 + H2 * H1, O_W3 = O_B2 + H2, O_B3 = O_W3 + 2 * H2,
    O_SKIP = O_B3 + 2, O_SIZE = O_SKIP + NIN
};

int celo_layout(int64_t *out) {
    out[0] = NPTR; out[1] = NCTL; out[2] = C_SIZE; out[3] = O_SIZE; out[4] = NFEAT; out[5] = H1; out[6] = H2;
    return 0;
}

#if defined(__AVX__)
#include <immintrin.h>
#endif

static double clampd(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }
static double signd(double x) { return (x > 0) - (x < 0); }

#define SCALAR float
#define FN(x) x##_f32
#include __FILE__
#undef SCALAR
#undef FN
#define SCALAR double
#define FN(x) x##_f64
#include __FILE__
#undef SCALAR
#undef FN

#else  /* the body, once per SCALAR */

/* LANES coordinates at a time in a GCC vector (32 bytes: 8 floats or 4 doubles); sums in vectors */
#define LANES (32 / (int)sizeof(SCALAR))
typedef SCALAR FN(vec) __attribute__((vector_size(32)));
typedef __typeof__(((FN(vec)){0}) > 0) FN(mask);
#define VEC FN(vec)

static inline VEC FN(load)(const SCALAR *p) { VEC v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void FN(store)(SCALAR *p, VEC v) { __builtin_memcpy(p, &v, sizeof v); }
static inline VEC FN(relu)(VEC a) {   /* max(a, 0); a NaN gives 0 */
#if defined(__AVX__)
    if (sizeof(SCALAR) == 4) {
        __m256 r; __builtin_memcpy(&r, &a, 32); r = _mm256_max_ps(r, _mm256_setzero_ps()); __builtin_memcpy(&a, &r, 32);
    } else {
        __m256d r; __builtin_memcpy(&r, &a, 32); r = _mm256_max_pd(r, _mm256_setzero_pd()); __builtin_memcpy(&a, &r, 32);
    }
    return a;
#else
    return (VEC)((FN(mask))a & (a > 0));
#endif
}
/* 1 / sqrt(a): in double, the correctly rounded sqrt and division; in float with AVX, the hardware's 12-bit
   estimate and one Newton step (relative error about 2e-7, a few float32 ulps; a third of the cost) */
static inline VEC FN(rsqrt)(VEC a) {
#if defined(__AVX__)
    if (sizeof(SCALAR) == 4) {
        __m256 r; __builtin_memcpy(&r, &a, 32); r = _mm256_rsqrt_ps(r);
        VEC y; __builtin_memcpy(&y, &r, 32);
        return y * ((SCALAR)1.5 - (SCALAR)0.5 * a * y * y);
    }
    else { __m256d r; __builtin_memcpy(&r, &a, 32); r = _mm256_sqrt_pd(r); VEC q; __builtin_memcpy(&q, &r, 32); return 1 / q; }
#else
    VEC q;
    for (int l = 0; l < LANES; l++) q[l] = (SCALAR)sqrt(a[l]);
    return 1 / q;
#endif
}

/* the new momenta (mi), second moments (vi) and raw features (x) of LANES coordinates from i */
#define FEATURES(i)                                                                              \
    const VEC gi = FN(load)(g + (i)), wi = FN(load)(w + (i));                                   \
    VEC mi[NDECAY], vi[NRMS], x[NFEAT];                                                         \
    for (int k = 0; k < NDECAY; k++) mi[k] = dec[k] * FN(load)(m[k] + (i)) + omd[k] * gi;        \
    for (int k = 0; k < NRMS; k++) vi[k] = rdec[k] * FN(load)(v[k] + (i)) + omr[k] * gi * gi;    \
    x[0] = gi; x[1] = wi;                                                                       \
    for (int k = 0; k < NDECAY; k++) x[2 + k] = mi[k];                                          \
    for (int b = 0; b < NRMS; b++) {                                                            \
        const VEC inv = FN(rsqrt)(vi[b] + (SCALAR)EPS);                                         \
        x[2 + NDECAY + b * (1 + NDECAY)] = gi * inv;                                            \
        for (int k = 0; k < NDECAY; k++) x[3 + NDECAY + b * (1 + NDECAY) + k] = mi[k] * inv;     \
    }

/* a tail of fewer than LANES coordinates goes through the same code on zero-padded copies */
typedef struct { SCALAR g[8], w[8], m[NDECAY][8], v[NRMS][8], last[8]; } FN(tail);

#define BLOCKV (BLOCK / LANES)

/* pass 1 over nvec vectors from coordinate 0 of the given pointers: adds the sums into tot */
static void FN(pass1)(int64_t nvec, const SCALAR *g, const SCALAR *w, const SCALAR *const *m, const SCALAR *const *v,
                      const SCALAR *last, const SCALAR *dec, const SCALAR *omd, const SCALAR *rdec, const SCALAR *omr,
                      double *tot) {
    for (int64_t b0 = 0; b0 < nvec; b0 += BLOCKV) {
        const int64_t b1 = b0 + BLOCKV < nvec ? b0 + BLOCKV : nvec;
        VEC s[NFEAT + 3];
        for (int f = 0; f < NFEAT + 3; f++) s[f] = (VEC){0};
        for (int64_t q = b0; q < b1; q++) {
            /* the squared features need no square root: (m / sqrt(v + eps))^2 = m^2 / (v + eps) */
            const int64_t i = q * LANES;
            const VEC gi = FN(load)(g + i), wi = FN(load)(w + i), g2 = gi * gi;
            VEC m2[NDECAY];
            for (int k = 0; k < NDECAY; k++) {
                const VEC mk = dec[k] * FN(load)(m[k] + i) + omd[k] * gi;
                m2[k] = mk * mk;
                s[2 + k] += m2[k];
            }
            s[0] += g2; s[1] += wi * wi;
            for (int b = 0; b < NRMS; b++) {
                const VEC r = 1 / (rdec[b] * FN(load)(v[b] + i) + omr[b] * g2 + (SCALAR)EPS);
                s[2 + NDECAY + b * (1 + NDECAY)] += g2 * r;
                for (int k = 0; k < NDECAY; k++) s[3 + NDECAY + b * (1 + NDECAY) + k] += m2[k] * r;
            }
            const VEC li = FN(load)(last + i);
            s[NFEAT] += gi * li; s[NFEAT + 1] += li * li; s[NFEAT + 2] += gi * wi;
        }
        for (int f = 0; f < NFEAT + 3; f++)
            for (int l = 0; l < LANES; l++) tot[f] += s[f][l];
    }
}

/* the folded weights, each broadcast to a vector once per tensor (an FMA then reads it from L1 directly) */
typedef struct { VEC W1[NFEAT][H1], B1[H1], W2[H1][H2], B2[H2], W3[2][H2], SK[NFEAT], C0, C1; } FN(mlp);

/* pass 2 over nvec vectors: new momenta and second moments, the direction d; adds the sums of d^2, of the
   magnitude output and of d * w (lanes weighted by valid) into sums */
static void FN(pass2)(int64_t nvec, const SCALAR *g, const SCALAR *w, const SCALAR *const *m, const SCALAR *const *v,
                      SCALAR *const *m_out, SCALAR *const *v_out, SCALAR *dbuf, const FN(mlp) *net,
                      const SCALAR *dec, const SCALAR *omd, const SCALAR *rdec, const SCALAR *omr, VEC valid,
                      double *sums) {
    for (int64_t b0 = 0; b0 < nvec; b0 += BLOCKV) {
        const int64_t b1 = b0 + BLOCKV < nvec ? b0 + BLOCKV : nvec;
        VEC sdd = {0}, smag = {0}, sdw = {0};
        for (int64_t q = b0; q < b1; q++) {
            const int64_t i = q * LANES;
            FEATURES(i)
            for (int k = 0; k < NDECAY; k++) FN(store)(m_out[k] + i, mi[k]);
            for (int k = 0; k < NRMS; k++) FN(store)(v_out[k] + i, vi[k]);
            /* feature-major: 8 accumulators in registers, each feature broadcast against its column */
            VEC h1[H1], h2[H2], d = {0};
            for (int j = 0; j < H1; j++) h1[j] = net->B1[j];
            for (int f = 0; f < NFEAT; f++) {
                const VEC xf = x[f];
                for (int j = 0; j < H1; j++) h1[j] += net->W1[f][j] * xf;
                d += net->SK[f] * xf;
            }
            for (int j = 0; j < H1; j++) h1[j] = FN(relu)(h1[j]);
            for (int j = 0; j < H2; j++) h2[j] = net->B2[j];
            for (int k = 0; k < H1; k++)
                for (int j = 0; j < H2; j++) h2[j] += net->W2[k][j] * h1[k];
            /* the last layer in two chains per output (shorter dependency chains) */
            VEC o1 = net->C1, o1b = {0}, db = net->C0;
            for (int k = 0; k < H2; k += 2) {
                const VEC hk = FN(relu)(h2[k]), hl = FN(relu)(h2[k + 1]);
                d += net->W3[0][k] * hk; o1 += net->W3[1][k] * hk;
                db += net->W3[0][k + 1] * hl; o1b += net->W3[1][k + 1] * hl;
            }
            d += db; o1 += o1b;
            FN(store)(dbuf + i, d);
            const VEC dv = d * valid;
            sdd += dv * d; smag += o1 * valid; sdw += dv * wi;
        }
        for (int l = 0; l < LANES; l++) { sums[0] += sdd[l]; sums[1] += smag[l]; sums[2] += sdw[l]; }
    }
}

static void FN(one_tensor)(int64_t n, int zero_dim, SCALAR **p, const double *cfg, const double *wt,
                           const double *ctl_in, double *ctl_out) {
    const SCALAR *g = p[0], *w = p[1], *last = p[9];
    const SCALAR *m[NDECAY], *v[NRMS];
    SCALAR *w_out = p[10], *m_out[NDECAY], *v_out[NRMS], *last_out = p[18];
    SCALAR *dbuf = last_out ? last_out : p[19];   /* last_dir is read in pass 1 only: d goes there */
    SCALAR dec[NDECAY], omd[NDECAY], rdec[NRMS], omr[NRMS];
    for (int k = 0; k < NDECAY; k++) {
        m[k] = p[2 + k]; m_out[k] = p[11 + k];
        dec[k] = (SCALAR)cfg[C_DECAY + k]; omd[k] = (SCALAR)(1 - cfg[C_DECAY + k]);
    }
    for (int k = 0; k < NRMS; k++) {
        v[k] = p[7 + k]; v_out[k] = p[16 + k];
        rdec[k] = (SCALAR)cfg[C_RMS + k]; omr[k] = (SCALAR)(1 - cfg[C_RMS + k]);
    }
    const int hyper = cfg[C_HYPER] != 0, radial = cfg[C_RADIAL] != 0 && !zero_dim;
    const int64_t nvec = n / LANES, done = nvec * LANES, rem = n - done;

    /* the tail: zero-padded copies (zeros add nothing to pass 1's sums; pass 2 weights its lanes) */
    FN(tail) t;
    __builtin_memset(&t, 0, sizeof t);
    const SCALAR *tm[NDECAY], *tv[NRMS];
    SCALAR *tm_out[NDECAY], *tv_out[NRMS], tdbuf[8];
    VEC valid_tail, ones;
    for (int l = 0; l < LANES; l++) { valid_tail[l] = l < rem; ones[l] = 1; }
    for (int64_t r = 0; r < rem; r++) {
        t.g[r] = g[done + r]; t.w[r] = w[done + r]; t.last[r] = last[done + r];
        for (int k = 0; k < NDECAY; k++) t.m[k][r] = m[k][done + r];
        for (int k = 0; k < NRMS; k++) t.v[k][r] = v[k][done + r];
    }
    for (int k = 0; k < NDECAY; k++) tm[k] = tm_out[k] = t.m[k];
    for (int k = 0; k < NRMS; k++) tv[k] = tv_out[k] = t.v[k];

    /* pass 1: sums of the squared features (and the controllers' dot products) */
    PROF(0)
    double tot[NFEAT + 3] = {0};
    FN(pass1)(nvec, g, w, m, v, last, dec, omd, rdec, omr, tot);
    if (rem) FN(pass1)(1, t.g, t.w, tm, tv, t.last, dec, omd, rdec, omr, tot);

    /* fold 1 / RMS of each feature into the first layer and the skip, the time features into the biases */
    const double *tf = cfg + C_TIME;
    FN(mlp) net;
    double inv_rms[NFEAT];
    const double count = n > 0 ? (double)n : 1;   /* an empty tensor: no coordinates, finite scalars */
    for (int f = 0; f < NFEAT; f++) inv_rms[f] = 1 / sqrt(tot[f] / count + EPS);
    for (int j = 0; j < H1; j++) {
        double b = wt[O_B1 + j];
        for (int k = 0; k < NTIME; k++) b += wt[O_W1 + j * NIN + NFEAT + k] * tf[k];
        net.B1[j] = (VEC){0} + (SCALAR)b;
        for (int f = 0; f < NFEAT; f++) net.W1[f][j] = (VEC){0} + (SCALAR)(wt[O_W1 + j * NIN + f] * inv_rms[f]);
    }
    for (int j = 0; j < H2; j++) {
        net.B2[j] = (VEC){0} + (SCALAR)wt[O_B2 + j];
        for (int k = 0; k < H1; k++) net.W2[k][j] = (VEC){0} + (SCALAR)wt[O_W2 + j * H1 + k];
    }
    for (int k = 0; k < H2; k++) {
        net.W3[0][k] = (VEC){0} + (SCALAR)wt[O_W3 + k];
        net.W3[1][k] = (VEC){0} + (SCALAR)wt[O_W3 + H2 + k];
    }
    double c0 = wt[O_B3];
    for (int k = 0; k < NTIME; k++) c0 += wt[O_SKIP + NFEAT + k] * tf[k];
    net.C0 = (VEC){0} + (SCALAR)c0; net.C1 = (VEC){0} + (SCALAR)wt[O_B3 + 1];
    for (int f = 0; f < NFEAT; f++) net.SK[f] = (VEC){0} + (SCALAR)(wt[O_SKIP + f] * inv_rms[f]);

    /* pass 2: new momenta and second moments, the MLP, the direction */
    PROF(1)
    double sums[3] = {0};
    FN(pass2)(nvec, g, w, m, v, m_out, v_out, dbuf, &net, dec, omd, rdec, omr, ones, sums);
    if (rem) {
        FN(pass2)(1, t.g, t.w, tm, tv, tm_out, tv_out, tdbuf, &net, dec, omd, rdec, omr, valid_tail, sums);
        for (int64_t r = 0; r < rem; r++) {
            dbuf[done + r] = tdbuf[r];
            for (int k = 0; k < NDECAY; k++) m_out[k][done + r] = t.m[k][r];
            for (int k = 0; k < NRMS; k++) v_out[k][done + r] = t.v[k][r];
        }
    }
    const double dd = sums[0], mag_sum = sums[1], dw = sums[2];
    PROF(2)

    /* per tensor: u = a * d + b * w */
    double a = cfg[C_OUTPUT_NORM] != 0 ? 1 / sqrt(dd / count + EPS) : 1;
    if (cfg[C_MAGNITUDE] != 0) {
        const double mean = mag_sum / count;
        a *= 2 / (1 + exp(-mean));
    }
    double b = 0;
    const double sqrt_n = sqrt((double)n), gg = tot[0], ww = tot[1];
    ctl_out[1] = ctl_in[1]; ctl_out[2] = ctl_in[2];
    if (radial) {
        const double inv_wn = 1 / sqrt(ww + EPS);
        double signal = tanh(tot[NFEAT + 2] * sqrt_n / sqrt(gg * ww + EPS)) * signd(ctl_in[2]);
        if (signal < 0) signal *= cfg[C_RADIAL_SHRINK];
        const double r = clampd(ctl_in[1] + cfg[C_RADIAL_GAIN] * signal, -cfg[C_RADIAL_RANGE], 0);
        const double c = a * dw * inv_wn;
        ctl_out[1] = r; ctl_out[2] = c * cfg[C_SCALE];   /* the coefficient of the step s = scale * u */
        b = (exp(r) - 1) * c * inv_wn;
    }
    double step_size = 1;
    ctl_out[0] = ctl_in[0];
    if (hyper) {
        double signal = tanh(tot[NFEAT] * sqrt_n / sqrt(gg * tot[NFEAT + 1] + EPS));
        if (signal < 0) signal *= cfg[C_HYPER_SHRINK];
        const double l = clampd(ctl_in[0] + cfg[C_HYPER_GAIN] * signal, cfg[C_HYPER_LOW], cfg[C_HYPER_HIGH]);
        ctl_out[0] = l;
        step_size = exp(l);
    }

    /* pass 3: the parameters and the last direction, s / rms(s) for the step s = scale * u before the step
       size (the hypergradient controller's state): rms(u)^2 from the sums of d^2, d * w and w^2 */
    const SCALAR A = (SCALAR)a, Bw = (SCALAR)b, S = (SCALAR)(cfg[C_SCALE] * step_size), WD = (SCALAR)cfg[C_WDECAY];
    const double s0 = cfg[C_SCALE], uu = a * a * dd + 2 * a * b * dw + b * b * ww;
    const SCALAR K = (SCALAR)(s0 / sqrt(s0 * s0 * uu / count + EPS));
    const int has_wd = cfg[C_HAS_WD] != 0;
    if (last_out) {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const SCALAR wi = w[i], u = A * dbuf[i] + Bw * wi;
            last_out[i] = K * u;
            w_out[i] = (has_wd ? wi * WD : wi) - S * u;
        }
    } else {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const SCALAR wi = w[i], u = A * dbuf[i] + Bw * wi;
            w_out[i] = (has_wd ? wi * WD : wi) - S * u;
        }
    }
    PROF(3)
}

/* nt tensors; tensor t takes the config and weights of set[t] (population members: one set each) */
int FN(celo_step)(int64_t nt, const int64_t *numel, const int64_t *zero_dim, const int64_t *set, SCALAR **ptrs,
                  const double *cfg, const double *weights, const double *ctl_in, double *ctl_out) {
    for (int64_t t = 0; t < nt; t++)
        FN(one_tensor)(numel[t], (int)zero_dim[t], ptrs + t * NPTR, cfg + set[t] * C_SIZE, weights + set[t] * O_SIZE,
                       ctl_in + t * NCTL, ctl_out + t * NCTL);
    return 0;
}

#undef FEATURES
#undef VEC
#undef LANES
#undef BLOCKV
#endif
