/* fp32 acos, sin and cos with the bits torch gives on CPU, for the lanes' scalar steps
 * (ops/lane_sphere.py, ops/lane_math.py).
 *
 * torch 2.13 computes float (and, through float, bf16) acos/sin/cos with SLEEF's u10 vector
 * functions (Sleef_acosf16_u10, Sleef_sinf16_u10, Sleef_cosf16_u10 on AVX512; the AVX2 ones,
 * from the same source, elsewhere), whose last bit differs from C's libm in a few percent of
 * cases. These are scalar rewrites of SLEEF's published algorithms for those functions in
 * their FMA variants: the Cody-Waite reduction by pi in three parts, the double-float
 * ("df": an unevaluated sum hi + lo) arithmetic, and the minimax polynomials with their
 * coefficients. Algorithms and coefficients: SLEEF by Naoki Shibata and contributors
 * (https://sleef.org, Boost Software License 1.0); the code here is our own.
 *
 * Each step is one IEEE fp32 operation (built with -ffp-contract=off) or, where SLEEF fuses
 * one, an explicit fmaf (exact on any CPU). sin and cos cover |x| < 125, SLEEF's first
 * reduction range; beyond it (and for NaN) SLEEF takes a Payne-Hanek reduction with its own
 * table, which is not reproduced: the functions say so and the callers fall back to torch.
 * bench/check_sleef_f32.py compares every fp32 input with torch; tests/ops/test_sleef_f32.py
 * a dense sample.
 */
#include "formats.h"

#define PI_A2F 3.1414794921875f
#define PI_B2F 0.00011315941810607910156f
#define PI_C2F 1.9841872589410058936e-09f
#define PI_HI 3.1415927410125732422f /* pi as a double-float */
#define PI_LO (-8.7422776573475857731e-08f)
#define TRIG_MAX 125.0f
#define ONE_OVER_PI ((float)0.318309886183790671537767526745028724)

typedef struct {
    float x, y; /* the value is x + y, |y| <= ulp(x) / 2 */
} DF;

static inline DF df(float x, float y) {
    DF r = {x, y};
    return r;
}

/* x with its sign flipped where y's sign bit is set */
static inline float mulsign(float x, float y) {
    uint32_t a, b;
    memcpy(&a, &x, 4);
    memcpy(&b, &y, 4);
    a ^= b & 0x80000000u;
    memcpy(&x, &a, 4);
    return x;
}

static inline float flip(float x) { return mulsign(x, -0.0f); }

static inline int is_neg_zero(float x) {
    uint32_t a;
    memcpy(&a, &x, 4);
    return a == 0x80000000u;
}

/* The double-float operations, in SLEEF's order of fp32 operations. */
static inline DF add_f_f(float x, float y) { /* needs |x| >= |y| */
    float s = x + y;
    return df(s, (x - s) + y);
}

static inline DF add2_f_f(float x, float y) { /* any order of magnitude */
    float s = x + y, v = s - x;
    return df(s, (x - (s - v)) + (y - v));
}

static inline DF add2_f_df(float x, DF y) {
    float s = x + y.x, v = s - x;
    return df(s, ((x - (s - v)) + (y.x - v)) + y.y);
}

static inline DF add_df_f(DF x, float y) {
    float s = x.x + y;
    return df(s, ((x.x - s) + y) + x.y);
}

static inline DF add2_df_f(DF x, float y) {
    float s = x.x + y, v = s - x.x;
    float t = (x.x - (s - v)) + (y - v);
    return df(s, t + x.y);
}

static inline DF add_f_df(float x, DF y) {
    float s = x + y.x;
    return df(s, ((x - s) + y.x) + y.y);
}

static inline DF sub_df_df(DF x, DF y) {
    float s = x.x - y.x;
    float t = ((x.x - s) - y.x) + x.y;
    return df(s, t - y.y);
}

static inline DF mul_f_f(float x, float y) {
    float s = x * y;
    return df(s, fmaf(x, y, -s));
}

static inline DF mul_df_df(DF x, DF y) {
    float s = x.x * y.x;
    return df(s, fmaf(x.x, y.y, fmaf(x.y, y.x, fmaf(x.x, y.x, -s))));
}

static inline float mul_df_df_f(DF x, DF y) { /* the product rounded to one float */
    return fmaf(x.x, y.x, fmaf(x.y, y.x, x.x * y.y));
}

static inline DF squ_df(DF x) {
    float s = x.x * x.x;
    return df(s, fmaf(x.x + x.x, x.y, fmaf(x.x, x.x, -s)));
}

static inline DF rec_f(float d) {
    float s = 1.0f / d;
    return df(s, s * fmaf(-d, s, 1.0f));
}

static inline DF scale_df(DF x, float s) { return df(x.x * s, x.y * s); }

static inline DF sqrt_f(float d) {
    float t = sqrtf(d);
    return scale_df(mul_df_df(add2_f_df(d, mul_f_f(t, t)), rec_f(t)), 0.5f);
}

float sleef_acosf(float d) {
    float a = fabsf(d);
    int small = a < 0.5f;
    float x2 = small ? d * d : (1.0f - a) * 0.5f;
    DF x = small ? df(a, 0.0f) : sqrt_f(x2);
    if (a == 1.0f) x = df(0.0f, 0.0f);
    float u = 0.4197454825e-1f;
    u = fmaf(u, x2, 0.2424046025e-1f);
    u = fmaf(u, x2, 0.4547423869e-1f);
    u = fmaf(u, x2, 0.7495029271e-1f);
    u = fmaf(u, x2, 0.1666677296e+0f);
    u = u * (x2 * x.x);
    DF y;
    if (small) { /* pi/2 - asin(d) */
        y = sub_df_df(df(PI_HI / 2, PI_LO / 2), add_f_f(mulsign(x.x, d), mulsign(u, d)));
    } else {     /* 2 asin(sqrt((1 - |d|) / 2)), reflected for d < 0 */
        y = scale_df(add_df_f(x, u), 2.0f);
        if (d < 0.0f) y = sub_df_df(df(PI_HI, PI_LO), y);
    }
    return y.x + y.y;
}

/* sin(t) (1 + ...) on the reduced argument t, as a double-float */
static inline float sin_poly(DF t) {
    DF s = squ_df(t);
    float u = 2.6083159809786593541503e-06f;
    u = fmaf(u, s.x, -0.0001981069071916863322258f);
    u = fmaf(u, s.x, 0.00833307858556509017944336f);
    DF x = add_f_df(1.0f, mul_df_df(add_f_f(-0.166666597127914428710938f, u * s.x), s));
    return mul_df_df_f(t, x);
}

int sleef_sinf(float d, float *out) {
    if (!(fabsf(d) < TRIG_MAX)) return 0;
    float u = rintf(d * ONE_OVER_PI);
    int q = (int)u;
    float v = fmaf(u, -PI_A2F, d);
    DF s = add2_f_f(v, u * -PI_B2F);
    s = add_df_f(s, u * -PI_C2F);
    float r = sin_poly(s);
    if (q & 1) r = flip(r);
    *out = is_neg_zero(d) ? d : r;
    return 1;
}

int sleef_cosf(float d, float *out) {
    if (!(fabsf(d) < TRIG_MAX)) return 0;
    float dq = fmaf(rintf(fmaf(d, ONE_OVER_PI, -0.5f)), 2.0f, 1.0f);
    int q = (int)dq;
    DF s = add2_f_f(d, dq * (-PI_A2F * 0.5f));
    s = add2_df_f(s, dq * (-PI_B2F * 0.5f));
    s = add2_df_f(s, dq * (-PI_C2F * 0.5f));
    float r = sin_poly(s);
    if ((q & 2) == 0) r = flip(r);
    *out = r;
    return 1;
}

/* sleef_f32(op, x) -> float or None: op 0 acos, 1 sin, 2 cos of the fp32 value x (a Python
 * float holding an fp32 value; other values are rounded to fp32 first). None: outside the
 * range reproduced (sin/cos of |x| >= 125 or NaN). */
PyObject *py_sleef_f32(PyObject *self, PyObject *args) {
    int op;
    double xd;
    if (!PyArg_ParseTuple(args, "id", &op, &xd)) return NULL;
    float x = (float)xd, r = 0.0f;
    int ok = 1;
    if (op == 0)
        r = sleef_acosf(x);
    else if (op == 1)
        ok = sleef_sinf(x, &r);
    else if (op == 2)
        ok = sleef_cosf(x, &r);
    else {
        PyErr_SetString(PyExc_ValueError, "op: 0 acos, 1 sin, 2 cos");
        return NULL;
    }
    if (!ok) Py_RETURN_NONE;
    return PyFloat_FromDouble((double)r);
}

/* sleef_f32_array(op, x_f32, out_f32) -> count of elements outside the range reproduced
 * (their outputs are NaN): the same functions over an array, for the tests and the check. */
PyObject *py_sleef_f32_array(PyObject *self, PyObject *args) {
    int op;
    PyObject *x_o, *out_o;
    if (!PyArg_ParseTuple(args, "iOO", &op, &x_o, &out_o)) return NULL;
    if (op < 0 || op > 2) {
        PyErr_SetString(PyExc_ValueError, "op: 0 acos, 1 sin, 2 cos");
        return NULL;
    }
    Buf x, out;
    Py_ssize_t n = -1;
    if (get_fmt_buf(x_o, FMT_F32, &n, 0, &x, "x") < 0) return NULL;
    if (get_fmt_buf(out_o, FMT_F32, &n, 1, &out, "out") < 0) {
        release(&x);
        return NULL;
    }
    const float *xs = x.view.buf;
    float *os = out.view.buf;
    Py_ssize_t missed = 0;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) {
        float r = NAN;
        int ok = 1;
        if (op == 0)
            r = sleef_acosf(xs[i]);
        else
            ok = op == 1 ? sleef_sinf(xs[i], &r) : sleef_cosf(xs[i], &r);
        if (!ok) {
            r = NAN;
            missed++;
        }
        os[i] = r;
    }
    Py_END_ALLOW_THREADS;
    release(&out);
    release(&x);
    return PyLong_FromSsize_t(missed);
}
