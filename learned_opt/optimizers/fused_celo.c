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

/* cfg layout (doubles) */
enum {
    C_DECAY = 0, C_RMS = C_DECAY + NDECAY, C_TIME = C_RMS + NRMS, C_SCALE = C_TIME + NTIME, C_WDECAY, C_HAS_WD,
    C_OUTPUT_NORM, C_MAGNITUDE, C_MAG_LOG_RANGE, C_HYPER, C_HYPER_GAIN, C_HYPER_LOW, C_HYPER_HIGH, C_HYPER_SHRINK,
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

/* the momenta, second moments and features of coordinate i: shared by passes 1 and 2 */
#define FEATURES(i)                                                                              \
    const SCALAR gi = g[i], wi = w[i];                                                          \
    SCALAR mi[NDECAY], vi[NRMS], x[NFEAT];                                                      \
    for (int k = 0; k < NDECAY; k++) mi[k] = dec[k] * m[k][i] + omd[k] * gi;                     \
    for (int k = 0; k < NRMS; k++) vi[k] = rdec[k] * v[k][i] + omr[k] * gi * gi;                 \
    x[0] = gi; x[1] = wi;                                                                       \
    for (int k = 0; k < NDECAY; k++) x[2 + k] = mi[k];                                          \
    for (int b = 0; b < NRMS; b++) {                                                            \
        const SCALAR inv = (SCALAR)1 / sqrt(vi[b] + (SCALAR)EPS);                                \
        x[2 + NDECAY + b * (1 + NDECAY)] = gi * inv;                                            \
        for (int k = 0; k < NDECAY; k++) x[3 + NDECAY + b * (1 + NDECAY) + k] = mi[k] * inv;     \
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

    /* pass 1: sums of the squared features (and the controllers' dot products) */
    double tot[NFEAT + 3] = {0};
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        SCALAR s[NFEAT + 3];
        for (int f = 0; f < NFEAT + 3; f++) s[f] = 0;
        #pragma omp simd reduction(+:s[:NFEAT + 3])
        for (int64_t i = i0; i < i1; i++) {
            FEATURES(i)
            for (int f = 0; f < NFEAT; f++) s[f] += x[f] * x[f];
            const SCALAR li = last[i];   /* g itself without the hypergradient: unused */
            s[NFEAT] += gi * li; s[NFEAT + 1] += li * li; s[NFEAT + 2] += gi * wi;
        }
        for (int f = 0; f < NFEAT + 3; f++) tot[f] += s[f];
    }

    /* fold 1 / RMS of each feature into the first layer and the skip, the time features into the biases */
    const double *tf = cfg + C_TIME;
    SCALAR W1[H1][NFEAT], B1[H1], W2[H2][H1], B2[H2], W3[2][H2], SK[NFEAT], C0, C1;
    double inv_rms[NFEAT];
    const double count = n > 0 ? (double)n : 1;   /* an empty tensor: no coordinates, finite scalars */
    for (int f = 0; f < NFEAT; f++) inv_rms[f] = 1 / sqrt(tot[f] / count + EPS);
    for (int j = 0; j < H1; j++) {
        double b = wt[O_B1 + j];
        for (int t = 0; t < NTIME; t++) b += wt[O_W1 + j * NIN + NFEAT + t] * tf[t];
        B1[j] = (SCALAR)b;
        for (int f = 0; f < NFEAT; f++) W1[j][f] = (SCALAR)(wt[O_W1 + j * NIN + f] * inv_rms[f]);
    }
    for (int j = 0; j < H2; j++) {
        B2[j] = (SCALAR)wt[O_B2 + j];
        for (int k = 0; k < H1; k++) W2[j][k] = (SCALAR)wt[O_W2 + j * H1 + k];
    }
    for (int k = 0; k < H2; k++) { W3[0][k] = (SCALAR)wt[O_W3 + k]; W3[1][k] = (SCALAR)wt[O_W3 + H2 + k]; }
    double c0 = wt[O_B3];
    for (int t = 0; t < NTIME; t++) c0 += wt[O_SKIP + NFEAT + t] * tf[t];
    C0 = (SCALAR)c0; C1 = (SCALAR)wt[O_B3 + 1];
    for (int f = 0; f < NFEAT; f++) SK[f] = (SCALAR)(wt[O_SKIP + f] * inv_rms[f]);

    /* pass 2: new momenta and second moments, the MLP, the direction */
    double dd = 0, mag_sum = 0, dw = 0;
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        const int64_t i1 = i0 + BLOCK < n ? i0 + BLOCK : n;
        SCALAR sdd = 0, smag = 0, sdw = 0;
        #pragma omp simd reduction(+:sdd, smag, sdw)
        for (int64_t i = i0; i < i1; i++) {
            FEATURES(i)
            for (int k = 0; k < NDECAY; k++) m_out[k][i] = mi[k];
            for (int k = 0; k < NRMS; k++) v_out[k][i] = vi[k];
            SCALAR h1[H1], h2[H2];
            for (int j = 0; j < H1; j++) {
                SCALAR a = B1[j];
                for (int f = 0; f < NFEAT; f++) a += W1[j][f] * x[f];
                h1[j] = a > 0 ? a : 0;
            }
            for (int j = 0; j < H2; j++) {
                SCALAR a = B2[j];
                for (int k = 0; k < H1; k++) a += W2[j][k] * h1[k];
                h2[j] = a > 0 ? a : 0;
            }
            SCALAR d = C0, o1 = C1;
            for (int k = 0; k < H2; k++) { d += W3[0][k] * h2[k]; o1 += W3[1][k] * h2[k]; }
            for (int f = 0; f < NFEAT; f++) d += SK[f] * x[f];
            dbuf[i] = d;
            sdd += d * d; smag += o1; sdw += d * wi;
        }
        dd += sdd; mag_sum += smag; dw += sdw;
    }

    /* per tensor: u = a * d + b * w */
    double a = cfg[C_OUTPUT_NORM] != 0 ? 1 / sqrt(dd / count + EPS) : 1;
    if (cfg[C_MAGNITUDE] != 0) {
        const double mean = mag_sum / count, r = cfg[C_MAG_LOG_RANGE];
        a *= r > 0 ? exp(r * tanh(mean)) : 2 / (1 + exp(-mean));
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
        ctl_out[1] = r; ctl_out[2] = c;
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

    /* pass 3: the parameters and the last direction */
    const SCALAR A = (SCALAR)a, Bw = (SCALAR)b, S = (SCALAR)(cfg[C_SCALE] * step_size), WD = (SCALAR)cfg[C_WDECAY];
    const int has_wd = cfg[C_HAS_WD] != 0;
    if (last_out) {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const SCALAR wi = w[i], u = A * dbuf[i] + Bw * wi;
            last_out[i] = u;
            w_out[i] = (has_wd ? wi * WD : wi) - S * u;
        }
    } else {
        #pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            const SCALAR wi = w[i], u = A * dbuf[i] + Bw * wi;
            w_out[i] = (has_wd ? wi * WD : wi) - S * u;
        }
    }
}

int FN(celo_step)(int64_t nt, const int64_t *numel, const int64_t *zero_dim, SCALAR **ptrs, const double *cfg,
                  const double *weights, const double *ctl_in, double *ctl_out) {
    for (int64_t t = 0; t < nt; t++)
        FN(one_tensor)(numel[t], (int)zero_dim[t], ptrs + t * NPTR, cfg, weights, ctl_in + t * NCTL, ctl_out + t * NCTL);
    return 0;
}

#undef FEATURES
#endif
