/* One LSTM layer's int8 sampling step for a batch of rows, in one call: the gate products and the
 * cell update, with nothing in between going back to memory or to PyTorch.
 *
 * Why C: on a CPU without fast bf16 a batch-32 sampling step is bound by its int8 multiply-adds, and
 * through PyTorch each layer was a quantised product (fbgemm measures and quantises the input,
 * multiplies, then scales the result out to memory: about 13 us a call before any arithmetic) and
 * then about ten passes for the cell update, each dispatched on its own. Here the input is quantised
 * once, the sums stay in registers, and the cell update runs on them as they come out. charlstm
 * compiles this file with the machine's C compiler on first use (charlstm/model/native.py) and keeps
 * PyTorch's way where it cannot.
 *
 * The conventions are LSTMStepper's: gates in PyTorch's (i, f, g, o) order with the cell gate's
 * weights already doubled (tanh(x) = 2 sigmoid(2x) - 1), the state kept as 2c and h/2, so that
 *     2c  <- f * 2c + 2 i (2 sigmoid(g) - 1)
 *     h/2 <- o * (sigmoid(2c) - 1/2)
 *
 * The int8 products. Each input row is quantised to q = round(x / s) + 64 with s = max|x| / 63, so
 * q is in 1..127: seven bits, so that AVX2's u8 x s8 pair sums (at most 2 * 127 * 127) never
 * saturate. The weights are int8 with one scale per gate row (native.py packs them): for each block
 * of UNITS units and each 4 inputs, the 4 gates' UNITS x 4 bytes side by side, so that one register
 * of sums holds one gate of UNITS units and the cell update runs on a register's worth of units at
 * once. Integer sums are exact, so every CPU gets the same ones; the +64 is taken out by starting
 * each sum at -64 times its weight row's sum.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>

/* 1 / (1 + exp(-x)); exp as 2^n p(r), r = x - n ln 2 in two parts (Cody and Waite), p Cephes'
 * expf polynomial: relative error about 1e-7. Branch-free, so the loops below vectorize. */
static inline float sigmoid(float x) {
    float y = -x;
    y = y < -87.0f ? -87.0f : y;
    y = y > 87.0f ? 87.0f : y;
    float n = __builtin_floorf(y * 1.44269504088896341f + 0.5f);
    float r = y - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t bits; float value; } two_to_n = { .bits = ((int32_t)n + 127) << 23 };
    return 1.0f / (1.0f + p * two_to_n.value);
}

/* One input row to seven bits (see above); its scale s is returned. The padding past k is 64 (zero).
 * Each x / s is clamped to -63..63 on its way (a no-op for finite rows of normal floats): a row whose
 * largest value is subnormal would round past it, and a NaN must not reach the conversion to int. */
static float quantize_row(int64_t k, int64_t k_padded, const float *restrict x, uint8_t *restrict q) {
    float largest = 0.0f;
#pragma omp simd reduction(max : largest)
    for (int64_t j = 0; j < k; j++)
        largest = fabsf(x[j]) > largest ? fabsf(x[j]) : largest;
    float scale = largest > 0.0f ? largest / 63.0f : 1.0f;
#pragma omp simd
    for (int64_t j = 0; j < k; j++) {
        float v = x[j] / scale;
        v = v > -63.0f ? v : -63.0f; /* NaN lands here too */
        v = v < 63.0f ? v : 63.0f;
        q[j] = (uint8_t)((int32_t)nearbyintf(v) + 64);
    }
    for (int64_t j = k; j < k_padded; j++)
        q[j] = 64;
    return scale;
}

/* The vector registers: UNITS int32 sums (one gate of UNITS units) each. ROWS rows go through a block's
 * weights at once: as many as the registers hold 4 sums each for, beside 4 of weights and a broadcast
 * (AVX512 has 32 registers, AVX2 16). */
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define UNITS 16
#define ROWS 4
typedef __m512i vector;
#define LOAD(p) _mm512_loadu_si512((const void *)(p))
#define STORE(p, v) _mm512_storeu_si512((void *)(p), v)
#define BROADCAST(four) _mm512_set1_epi32(four)
#if defined(__AVX512VNNI__)
#define ACCUMULATE(total, x, weights) total = _mm512_dpbusd_epi32(total, x, weights)
#else
#define ACCUMULATE(total, x, weights) \
    total = _mm512_add_epi32(total, _mm512_madd_epi16(_mm512_maddubs_epi16(x, weights), _mm512_set1_epi16(1)))
#endif
#elif defined(__AVX2__)
#define UNITS 8
#define ROWS 2
typedef __m256i vector;
#define LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define STORE(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define BROADCAST(four) _mm256_set1_epi32(four)
#define ACCUMULATE(total, x, weights) \
    total = _mm256_add_epi32(total, _mm256_madd_epi16(_mm256_maddubs_epi16(x, weights), _mm256_set1_epi16(1)))
#else
#error "lstm_layer.c needs AVX2 or AVX512: native.py builds it only for those (fbgemm's int8 needs AVX2 too)"
#endif

/* The int32 sums of one block of UNITS units (4 gates each) for `active` (at most ROWS) rows of quantised
 * input x[row]: sums[row][gate][unit], started at start[gate][unit]. quads = k_padded / 4. Inlined with
 * `active` a constant, so each row count gets its own loop. */
static inline __attribute__((always_inline)) void block_sums(int active, int64_t quads, const uint8_t *const x[ROWS],
                                                             const int8_t *w, const int32_t *start,
                                                             int32_t sums[ROWS][4][UNITS]) {
    vector sum[ROWS][4];
    for (int row = 0; row < active; row++)
        for (int gate = 0; gate < 4; gate++)
            sum[row][gate] = LOAD(start + gate * UNITS);
    for (int64_t t = 0; t < quads; t++) {
        vector weights[4];
        for (int gate = 0; gate < 4; gate++)
            weights[gate] = LOAD(w + (t * 4 + gate) * 4 * UNITS);
        for (int row = 0; row < active; row++) {
            int32_t four;
            memcpy(&four, x[row] + 4 * t, 4);
            const vector broadcast = BROADCAST(four);
            for (int gate = 0; gate < 4; gate++)
                ACCUMULATE(sum[row][gate], broadcast, weights[gate]);
        }
    }
    for (int row = 0; row < active; row++)
        for (int gate = 0; gate < 4; gate++)
            STORE(sums[row][gate], sum[row][gate]);
}

/* The cell update of one row's block of units from its sums. The first `count` units are real (the
 * last block may end in padding). weight_scale, bias and table_row are this block's, 4 x UNITS each,
 * gate-major. */
static void update_units(int count, const int32_t sums[4][UNITS], float input_scale, const float *restrict weight_scale,
                         const float *restrict bias, const float *restrict table_row, float *restrict double_c,
                         float *restrict half_h) {
    const int32_t *flat = &sums[0][0];
    float gate[4][UNITS], *pre = &gate[0][0];
#pragma omp simd
    for (int k = 0; k < 4 * UNITS; k++)
        pre[k] = (float)flat[k] * (input_scale * weight_scale[k]) + bias[k];
    if (table_row)
#pragma omp simd
        for (int k = 0; k < 4 * UNITS; k++)
            pre[k] += table_row[k];
#pragma omp simd
    for (int k = 0; k < 4 * UNITS; k++)
        pre[k] = sigmoid(pre[k]);
    float c[UNITS], h[UNITS];
#pragma omp simd
    for (int u = 0; u < UNITS; u++) {
        float old = u < count ? double_c[u] : 0.0f;
        c[u] = gate[1][u] * old + 2.0f * gate[0][u] * (2.0f * gate[2][u] - 1.0f);
        h[u] = gate[3][u] * (sigmoid(c[u]) - 0.5f);
    }
    for (int u = 0; u < count; u++) {
        double_c[u] = c[u];
        half_h[u] = h[u];
    }
}

/* One layer, one step, rows streams.
 *   x (rows x k, row stride x_stride): the layer's input, [h/2 below | own h/2], read before anything is written;
 *   scratch_q (rows x k_padded bytes), scratch_scale (rows floats): room for the quantised input;
 *   weights: packed as above, ceil(hidden / UNITS) blocks of (k_padded / 4) x 4 x UNITS x 4 bytes;
 *   start, weight_scale, bias: per block, 4 x UNITS each (gate-major): the sums' starting values
 *   (-64 times the weight row's sum), each weight row's scale and the bias;
 *   table, ids: when table is not NULL, row r adds table row ids[r] (laid out like bias, per block) - layer 0's
 *   input product;
 *   double_c, half_h: the state, updated in place (row strides c_stride, h_stride).
 * Returns 0, or -1 without touching the state when an id is out of range. Built with OpenMP (PyTorch's own
 * runtime, so its threads), the blocks of units are shared among them. */
int64_t lstm_layer_step(int64_t rows, int64_t hidden, int64_t k, int64_t k_padded, const float *x, int64_t x_stride,
                        uint8_t *scratch_q, float *scratch_scale, const int8_t *weights, const int32_t *start,
                        const float *weight_scale, const float *bias, const float *table, int64_t table_rows,
                        const int64_t *ids, float *double_c, int64_t c_stride, float *half_h, int64_t h_stride) {
    if (table)
        for (int64_t r = 0; r < rows; r++)
            if (ids[r] < 0 || ids[r] >= table_rows)
                return -1;
    const int64_t blocks = (hidden + UNITS - 1) / UNITS, quads = k_padded / 4, per_block = 4 * UNITS;
    const int64_t table_stride = blocks * per_block;
#pragma omp parallel if (rows * blocks * k_padded >= 4096)
    {
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            scratch_scale[r] = quantize_row(k, k_padded, x + r * x_stride, scratch_q + r * k_padded);
#pragma omp for schedule(static)
        for (int64_t block = 0; block < blocks; block++) {
            const int8_t *block_weights = weights + block * quads * 4 * 4 * UNITS;
            const int64_t first = block * UNITS;
            const int count = hidden - first < UNITS ? (int)(hidden - first) : UNITS;
            int32_t sums[ROWS][4][UNITS];
            for (int64_t r = 0; r < rows; r += ROWS) {
                const int64_t here = rows - r < ROWS ? rows - r : ROWS;
                const uint8_t *x_rows[ROWS];
                for (int m = 0; m < here; m++)
                    x_rows[m] = scratch_q + (r + m) * k_padded;
                const int32_t *block_start = start + block * per_block;
                switch (here) {  /* each a loop of its own (see block_sums) */
                case ROWS: block_sums(ROWS, quads, x_rows, block_weights, block_start, sums); break;
                case 1: block_sums(1, quads, x_rows, block_weights, block_start, sums); break;
#if ROWS > 2
                case 2: block_sums(2, quads, x_rows, block_weights, block_start, sums); break;
                case 3: block_sums(3, quads, x_rows, block_weights, block_start, sums); break;
#endif
                }
                for (int m = 0; m < here; m++)
                    update_units(count, sums[m], scratch_scale[r + m], weight_scale + block * per_block,
                                 bias + block * per_block,
                                 table ? table + ids[r + m] * table_stride + block * per_block : NULL,
                                 double_c + (r + m) * c_stride + first, half_h + (r + m) * h_stride + first);
            }
        }
    }
    return 0;
}

/* How many units share a block in the packed weights (see the top): the packer asks. */
int64_t lstm_layer_units(void) { return UNITS; }
