/* One LSTM layer's cell update for a batch of rows, in one pass over the gates.
 *
 * Why C: after the gate product, PyTorch needs about ten separate passes per layer
 * (sigmoid, the cell update, tanh(c), h), each a dispatch of its own; on a CPU whose
 * int8 products are already at their peak that was a third of a batch-32 sampling
 * step. Here each row's gates are read once and c and h written once. charlstm
 * compiles this file with the machine's C compiler on first use (charlstm/model/native.py)
 * and falls back to the PyTorch passes where there is none.
 *
 * The conventions are LSTMStepper's: gates in PyTorch's (i, f, g, o) order with the
 * cell gate's pre-activation already doubled (tanh(x) = 2 sigmoid(2x) - 1), the state
 * kept as 2c and h/2, so that
 *     2c  <- f * 2c + 2 i (2 sigmoid(g) - 1)
 *     h/2 <- o * (sigmoid(2c) - 1/2)
 */
#include <stdint.h>

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

/* One row: the four gates' sigmoids into the scratch row first (one long independent loop, which keeps
 * more of them in flight than a loop doing all five per cell), then the cell update. */
static void update_row(int64_t hidden, const float *restrict gates, const float *restrict extra,
                       float *restrict double_c, float *restrict half_h, float *restrict scratch) {
    if (extra) {
#pragma omp simd
        for (int64_t k = 0; k < 4 * hidden; k++)
            scratch[k] = sigmoid(gates[k] + extra[k]);
    } else {
#pragma omp simd
        for (int64_t k = 0; k < 4 * hidden; k++)
            scratch[k] = sigmoid(gates[k]);
    }
    const float *i = scratch, *f = scratch + hidden, *g = scratch + 2 * hidden, *o = scratch + 3 * hidden;
#pragma omp simd
    for (int64_t j = 0; j < hidden; j++) {
        float c = f[j] * double_c[j] + 2.0f * i[j] * (2.0f * g[j] - 1.0f);
        double_c[j] = c;
        half_h[j] = o[j] * (sigmoid(c) - 0.5f);
    }
}

/* gates: rows x 4H pre-activations (row stride gate_stride). table, ids: when table is not
 * NULL, row r adds table row ids[r] (4H wide, of table_rows) to its gates: layer 0's input
 * product and bias. double_c, half_h: the layer's state, updated in place (row strides
 * c_stride, h_stride). Returns 0, or -1 without touching the state when an id is out of range.
 * Built with OpenMP (PyTorch's own runtime, so its threads), the rows are shared among them. */
int64_t lstm_cell_update(int64_t rows, int64_t hidden, const float *gates, int64_t gate_stride,
                         const float *table, int64_t table_rows, const int64_t *ids, float *double_c,
                         int64_t c_stride, float *half_h, int64_t h_stride) {
    if (table)
        for (int64_t r = 0; r < rows; r++)
            if (ids[r] < 0 || ids[r] >= table_rows)
                return -1;
#pragma omp parallel for schedule(static) if (rows >= 8)
    for (int64_t r = 0; r < rows; r++) {
        float scratch[4 * hidden];
        update_row(hidden, gates + r * gate_stride, table ? table + ids[r] * 4 * hidden : 0,
                   double_c + r * c_stride, half_h + r * h_stride, scratch);
    }
    return 0;
}
