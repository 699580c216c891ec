/*
 * vsqe_hook.h: the C ABI of libvsqe_hook, vsqe's learned quality enhancement for a host decoder
 * (HM) that calls it once per picture, as an in-loop filter or as a post-filter.
 *
 * Plain C99. Only ints, pointers and the structs below cross the ABI. The handle is opaque. No
 * call aborts the host process: every failure comes back as a negative status, and
 * vsqe_hook_last_error() gives a one-line message for it.
 *
 * The library embeds Python and runs vsqe's Enhancer through the same window code as `vsqe run`.
 * It looks for the Python environment in $VSQE_PYTHON (a venv directory or its bin/python) and
 * otherwise uses the interpreter that built the library. A host that already runs Python keeps
 * its interpreter. See docs/hm.md.
 *
 * Pictures are planar, one buffer per component, in the host's own memory. That is HM's
 * TComPicYuv: Pel samples (int16 by default, int32 with HIGH_BITDEPTH) at the internal bit depth,
 * plane pointers at the top-left *visible* sample (getAddr(comp)), and row strides in *samples*
 * (getStride(comp)). The samples around the visible area (HM's margins) are never read or written.
 */
#ifndef VSQE_HOOK_H
#define VSQE_HOOK_H

#include <stddef.h>

#define VSQE_HOOK_VERSION_MAJOR 1
#define VSQE_HOOK_VERSION_MINOR 1
#define VSQE_HOOK_VERSION_PATCH 0
/* 10000 * major + 100 * minor + patch; compare it with vsqe_hook_version() at run time. */
#define VSQE_HOOK_VERSION \
  (VSQE_HOOK_VERSION_MAJOR * 10000 + VSQE_HOOK_VERSION_MINOR * 100 + VSQE_HOOK_VERSION_PATCH)

#if defined(_WIN32) && defined(VSQE_HOOK_BUILD)
#define VSQE_HOOK_API __declspec(dllexport)
#elif defined(_WIN32)
#define VSQE_HOOK_API __declspec(dllimport)
#elif defined(__GNUC__)
#define VSQE_HOOK_API __attribute__((visibility("default")))
#else
#define VSQE_HOOK_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque handle: one model on one stream. */
typedef struct vsqe_hook vsqe_hook;

/* Status codes. 0 is success. Every failure is negative. */
enum vsqe_hook_status {
  VSQE_HOOK_OK = 0,
  VSQE_HOOK_E_ARG = -1,      /* null pointer, stride shorter than a row, bad enum, bad struct_size */
  VSQE_HOOK_E_FORMAT = -2,   /* size, bit depth or chroma format that the model cannot take */
  VSQE_HOOK_E_MODEL = -3,    /* unknown model, missing or unfit weights, model unusable in this mode
                                (e.g. a PQF model such as mfqev2 in in-loop mode) */
  VSQE_HOOK_E_BACKEND = -4,  /* unknown or unavailable inference backend */
  VSQE_HOOK_E_STATE = -5,    /* call not valid now: wrong mode, push after flush, handle failed earlier */
  VSQE_HOOK_E_CLOSED = -6,   /* the handle was closed */
  VSQE_HOOK_E_PYTHON = -7,   /* the embedded interpreter did not start, or vsqe is not importable */
  VSQE_HOOK_E_INTERNAL = -8  /* anything else (an exception during inference, out of memory) */
};

/* How the handle is used. */
enum vsqe_hook_mode {
  VSQE_HOOK_MODE_POST = 0,   /* push in output (POC) order, pull enhanced pictures, flush at the end */
  VSQE_HOOK_MODE_INLOOP = 1  /* filter each reconstructed picture in place, in decoding order */
};

/* Chroma formats: the same values as HM's ChromaFormat. */
enum vsqe_hook_chroma {
  VSQE_HOOK_CHROMA_400 = 0,
  VSQE_HOOK_CHROMA_420 = 1,
  VSQE_HOOK_CHROMA_422 = 2,
  VSQE_HOOK_CHROMA_444 = 3
};

/* Slice types: the same values as HM's SliceType. */
enum vsqe_hook_slice {
  VSQE_HOOK_SLICE_B = 0,
  VSQE_HOOK_SLICE_P = 1,
  VSQE_HOOK_SLICE_I = 2
};

/* What to open. Fill it with vsqe_hook_config_init() first, then set the fields you need. */
typedef struct vsqe_hook_config {
  size_t struct_size;    /* sizeof(vsqe_hook_config), set by vsqe_hook_config_init */
  const char *model;     /* registered model name, e.g. "stdf" (default) */
  const char *weights;   /* checkpoint file; NULL: the model's shipped default weights */
  const char *backend;   /* inference backend; NULL: "auto" */
  int width;             /* visible luma width in samples (HM: getWidth(COMPONENT_Y)) */
  int height;            /* visible luma height in samples */
  int bit_depth;         /* internal bit depth, 8..16 (HM: sps.getBitDepth); luma and chroma alike */
  int chroma_format;     /* enum vsqe_hook_chroma; default 4:2:0 */
  int mode;              /* enum vsqe_hook_mode; default post */
  int sample_bytes;      /* sizeof(Pel): 2 (int16, HM default; bit depth <= 15) or 4 (int32) */
  int threads;           /* CPU inference threads; 0: the library's default */
  int allow_untrained;   /* non-zero: if the model has no trained weights, run a deterministic
                            random-init network (tests and demos only: not an enhancement) */
} vsqe_hook_config;

/* One picture in the host's memory, plus its side information. */
typedef struct vsqe_hook_picture {
  void *planes[3];       /* top-left visible sample of Y, Cb, Cr (HM: getAddr(comp));
                            planes[1] and planes[2] are not used for 4:0:0 */
  ptrdiff_t strides[3];  /* row stride of each plane in samples (HM: getStride(comp)), >= width */
  int poc;               /* picture order count */
  int slice_qp;          /* slice QP (HM: getSliceQp()) */
  int slice_type;        /* enum vsqe_hook_slice */
  int temporal_layer;    /* temporal id (HM: getTLayer()) */
} vsqe_hook_picture;

/* VSQE_HOOK_VERSION of the library that is loaded. */
VSQE_HOOK_API int vsqe_hook_version(void);

/* A short name for a status code ("VSQE_HOOK_E_ARG"); never NULL. */
VSQE_HOOK_API const char *vsqe_hook_status_name(int status);

/* Defaults: model "stdf", shipped weights, backend "auto", 8-bit 4:2:0, post mode, int16 samples.
 * width and height are 0 and must be set. */
VSQE_HOOK_API void vsqe_hook_config_init(vsqe_hook_config *cfg);

/* Loads the model and returns a handle in *out (NULL on failure). The first call in a process
 * starts the embedded Python interpreter, which takes seconds. On failure the message is in
 * vsqe_hook_last_error(NULL). */
VSQE_HOOK_API int vsqe_hook_open(const vsqe_hook_config *cfg, vsqe_hook **out);

/* Since 1.1: vsqe_hook_open with extra options, a NULL-terminated array of "key=value" strings
 * (options == NULL: none, the same as vsqe_hook_open). Unknown keys give VSQE_HOOK_E_ARG. Keys:
 *   pqf_weights=FILE   PQF models (mfqev2): weights of the PQF network; without it cfg->weights
 *                      enhance PQFs too (said once on stderr)
 *   pqf_lookahead=N    PQF models: pictures the scheduler waits for the next PQF (default 8)
 * PQF models find their peak-quality frames from the pushed pictures' slice_qp (docs/mfqev2.md)
 * and run in post mode only: in-loop mode gives VSQE_HOOK_E_MODEL (a frame waits for the next PQF,
 * which an in-loop filter cannot do). */
VSQE_HOOK_API int vsqe_hook_open_with_options(const vsqe_hook_config *cfg, const char *const *options,
                                              vsqe_hook **out);

/* Releases the model and the pictures held. Call it once per handle. Later calls with the same
 * pointer return VSQE_HOOK_E_CLOSED (the handle stays a small tombstone, never reused). */
VSQE_HOOK_API int vsqe_hook_close(vsqe_hook *h);

/* The message of the last failure on h, or with h == NULL, the last failure of vsqe_hook_open
 * (or of a call given a null or unknown handle) on this thread. It is "" when there was none.
 * The text stays valid until the next call with the same handle (or, for NULL, on this thread). */
VSQE_HOOK_API const char *vsqe_hook_last_error(const vsqe_hook *h);

/* After the first failure on a handle, every call except vsqe_hook_close and
 * vsqe_hook_last_error returns VSQE_HOOK_E_STATE: the window state may be incomplete. */

/* Delay of the post-filter in pictures: after n pushes, n - delay enhanced pictures can be
 * pulled before the flush (the model's temporal radius for STDF). 0 in in-loop mode. For PQF
 * models it is an upper bound (at least n - delay are ready; a PQF's arrival releases the pictures
 * waiting for it earlier): the PQF rule's delay (5) plus the look-ahead (default 8), 13. */
VSQE_HOOK_API int vsqe_hook_get_delay(vsqe_hook *h, int *delay);

/* In-loop mode: filters one reconstructed picture in place (visible area only; output rounded and
 * clipped to the bit depth). Call it in decoding order, after SAO and before the picture serves
 * as a reference. Multi-frame models see the pictures filtered before, in POC order, and nothing
 * that comes later in decoding order (see docs/hm.md for the causal window). */
VSQE_HOOK_API int vsqe_hook_filter_inloop(vsqe_hook *h, const vsqe_hook_picture *pic);

/* Post mode: hands over one picture in output (POC) order. Its samples are copied, so the
 * buffer may be reused as soon as the call returns. */
VSQE_HOOK_API int vsqe_hook_push(vsqe_hook *h, const vsqe_hook_picture *pic);

/* Post mode: writes the next enhanced picture, if the model's window has it, into the buffers
 * that out->planes / out->strides name, fills out->poc, slice_qp, slice_type and temporal_layer
 * from the pushed picture, and sets *got to 1. With nothing ready, *got is 0 and out is left
 * alone. Pictures come out in push order. */
VSQE_HOOK_API int vsqe_hook_pull(vsqe_hook *h, vsqe_hook_picture *out, int *got);

/* Post mode: the end of the stream. The last windows are formed (replicating the last picture),
 * and the remaining pictures can then be pulled. No push after it. */
VSQE_HOOK_API int vsqe_hook_flush(vsqe_hook *h);

#ifdef __cplusplus
}
#endif

#endif /* VSQE_HOOK_H */
