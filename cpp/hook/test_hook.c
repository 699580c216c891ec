/*
 * test_hook: plays HM's part for libvsqe_hook (driven by tests/hook/test_hook.py).
 *
 *   test_hook RAW SIDE WIDTH HEIGHT [--post OUT] [--inloop OUT] [--inloop-shift S] [--model M] [--errors]
 *             [--weights FILE] [--option KEY=VALUE]... [--delay-bound]
 *   test_hook errors
 *   test_hook badenv      (run with VSQE_PYTHON naming no Python)
 *
 * RAW holds 8-bit planar 4:2:0 pictures in decoding order. SIDE has one line per picture,
 * "POC QP TYPE TLAYER" (TYPE is I, P or B). Each picture is copied into an HM-like buffer:
 * Pel = int16, samples shifted left by S in-loop (internal bit depth 8 + S), and margins of 80 luma and
 * 40 chroma samples (CTU 64 + 16) filled with a sentinel. The strides in samples include the
 * margins. --post pushes the pictures in POC order, pulls whatever is ready after each push, then
 * flushes and drains. --inloop filters them in place in decoding order. Both write the visible area
 * to OUT (8-bit, or 16-bit little-endian when S > 0) and check the contract after every call:
 * margins untouched, input of a push unchanged, output within the bit depth, and the number of
 * pictures ready after n pushes equal to n - delay. errors (or --errors, after the others, in the
 * same process) checks the failure contract. The exit status is 0 when every check passed.
 * --weights sets cfg.weights, --option passes "KEY=VALUE" to vsqe_hook_open_with_options (PQF
 * models: pqf_weights, pqf_lookahead), and --delay-bound checks the delay as the upper bound that
 * PQF models report (at least n - delay pictures ready after n pushes) instead of exactly.
 */
#include "vsqe_hook.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL ((int16_t)-21846) /* 0xAAAA: never a valid sample */
#define MARGIN 80                  /* HM: max CU size 64 + 16 */

#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "test_hook: FAILED at line %d: %s: ", __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                        \
      fprintf(stderr, "\n");                                               \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

/* ---- an HM-like picture buffer (TComPicYuv with margins) ------------------------------------ */

typedef struct {
  int width[3], height[3];  /* visible size per plane */
  int margin_x[3], margin_y[3];
  int stride[3], rows[3];   /* in samples, margins included */
  int16_t *buf[3];          /* allocation start (HM: getBuf) */
} HmPicture;

static void hm_alloc(HmPicture *p, int width, int height) {
  for (int c = 0; c < 3; ++c) {
    const int s = c ? 1 : 0; /* 4:2:0 */
    p->width[c] = width >> s;
    p->height[c] = height >> s;
    p->margin_x[c] = MARGIN >> s;
    p->margin_y[c] = MARGIN >> s;
    p->stride[c] = p->width[c] + 2 * p->margin_x[c];
    p->rows[c] = p->height[c] + 2 * p->margin_y[c];
    p->buf[c] = (int16_t *)malloc(sizeof(int16_t) * (size_t)p->stride[c] * (size_t)p->rows[c]);
    CHECK(p->buf[c] != NULL, "out of memory");
  }
}

static void hm_free(HmPicture *p) {
  for (int c = 0; c < 3; ++c) free(p->buf[c]);
}

/* HM: getAddr(comp), the top-left visible sample */
static int16_t *hm_addr(const HmPicture *p, int c) {
  return p->buf[c] + (size_t)p->margin_y[c] * p->stride[c] + p->margin_x[c];
}

static void hm_fill(HmPicture *p, int16_t value) {
  for (int c = 0; c < 3; ++c)
    for (size_t i = 0; i < (size_t)p->stride[c] * p->rows[c]; ++i) p->buf[c][i] = value;
}

static void hm_load(HmPicture *p, const uint8_t *raw, int shift) {
  hm_fill(p, SENTINEL);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < p->height[c]; ++y) {
      int16_t *row = hm_addr(p, c) + (size_t)y * p->stride[c];
      for (int x = 0; x < p->width[c]; ++x) row[x] = (int16_t)(raw[x] << shift);
      raw += p->width[c];
    }
  }
}

static void hm_as_picture(const HmPicture *p, vsqe_hook_picture *pic) {
  for (int c = 0; c < 3; ++c) {
    pic->planes[c] = hm_addr(p, c);
    pic->strides[c] = p->stride[c];
  }
}

/* Number of margin samples that are no longer the sentinel. */
static long hm_margin_damage(const HmPicture *p) {
  long bad = 0;
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < p->rows[c]; ++y)
      for (int x = 0; x < p->stride[c]; ++x) {
        const int inside = y >= p->margin_y[c] && y < p->margin_y[c] + p->height[c] && x >= p->margin_x[c] &&
                           x < p->margin_x[c] + p->width[c];
        if (!inside && p->buf[c][(size_t)y * p->stride[c] + x] != SENTINEL) ++bad;
      }
  return bad;
}

/* Visible samples outside [0, peak]. */
static long hm_out_of_range(const HmPicture *p, int peak) {
  long bad = 0;
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < p->height[c]; ++y) {
      const int16_t *row = hm_addr(p, c) + (size_t)y * p->stride[c];
      for (int x = 0; x < p->width[c]; ++x) bad += row[x] < 0 || row[x] > peak;
    }
  return bad;
}

static int hm_equal(const HmPicture *a, const HmPicture *b) {
  for (int c = 0; c < 3; ++c)
    if (memcmp(a->buf[c], b->buf[c], sizeof(int16_t) * (size_t)a->stride[c] * a->rows[c])) return 0;
  return 1;
}

static void hm_copy(HmPicture *dst, const HmPicture *src) {
  for (int c = 0; c < 3; ++c) memcpy(dst->buf[c], src->buf[c], sizeof(int16_t) * (size_t)src->stride[c] * src->rows[c]);
}

static void hm_write(const HmPicture *p, FILE *f, int shift) {
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < p->height[c]; ++y) {
      const int16_t *row = hm_addr(p, c) + (size_t)y * p->stride[c];
      for (int x = 0; x < p->width[c]; ++x) {
        if (shift) {
          const uint16_t v = (uint16_t)row[x];
          const uint8_t le[2] = {(uint8_t)(v & 0xff), (uint8_t)(v >> 8)};
          CHECK(fwrite(le, 1, 2, f) == 2, "write failed");
        } else {
          const uint8_t v = (uint8_t)row[x];
          CHECK(fwrite(&v, 1, 1, f) == 1, "write failed");
        }
      }
    }
}

/* ---- input ---------------------------------------------------------------------------------- */

typedef struct {
  int poc, qp, type, tlayer;
  uint8_t *raw;
} InputPicture;

static int slice_type_of(char letter) {
  return letter == 'I' ? VSQE_HOOK_SLICE_I : letter == 'P' ? VSQE_HOOK_SLICE_P : VSQE_HOOK_SLICE_B;
}

static int read_inputs(const char *raw_path, const char *side_path, int width, int height, InputPicture **out) {
  FILE *side = fopen(side_path, "r");
  FILE *raw = fopen(raw_path, "rb");
  CHECK(side && raw, "cannot open %s or %s", side_path, raw_path);
  const size_t frame_bytes = (size_t)width * height * 3 / 2;
  int n = 0, cap = 0;
  InputPicture *pics = NULL;
  int poc, qp, tl;
  char type;
  while (fscanf(side, "%d %d %c %d", &poc, &qp, &type, &tl) == 4) {
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      pics = (InputPicture *)realloc(pics, sizeof(InputPicture) * (size_t)cap);
      CHECK(pics != NULL, "out of memory");
    }
    pics[n].poc = poc;
    pics[n].qp = qp;
    pics[n].type = slice_type_of(type);
    pics[n].tlayer = tl;
    pics[n].raw = (uint8_t *)malloc(frame_bytes);
    CHECK(pics[n].raw && fread(pics[n].raw, 1, frame_bytes, raw) == frame_bytes, "%s: short read at picture %d",
          raw_path, n);
    ++n;
  }
  fclose(side);
  fclose(raw);
  CHECK(n > 0, "no pictures in %s", side_path);
  *out = pics;
  return n;
}

static int by_poc(const void *a, const void *b) {
  return ((const InputPicture *)a)->poc - ((const InputPicture *)b)->poc;
}

#define MAX_OPTIONS 8
static const char *g_weights = NULL;
static const char *g_options[MAX_OPTIONS + 1] = {NULL};
static int g_delay_bound = 0;

static vsqe_hook *open_or_die(const char *model, int width, int height, int shift, int mode) {
  vsqe_hook_config cfg;
  vsqe_hook_config_init(&cfg);
  cfg.model = model;
  cfg.width = width;
  cfg.height = height;
  cfg.bit_depth = 8 + shift;
  cfg.chroma_format = VSQE_HOOK_CHROMA_420;
  cfg.mode = mode;
  cfg.allow_untrained = 1;
  cfg.weights = g_weights;
  vsqe_hook *h = NULL;
  const int rc = vsqe_hook_open_with_options(&cfg, g_options, &h);
  CHECK(rc == VSQE_HOOK_OK && h != NULL, "vsqe_hook_open: %s: %s", vsqe_hook_status_name(rc), vsqe_hook_last_error(NULL));
  return h;
}

/* ---- post-filter ---------------------------------------------------------------------------- */

static int pull_ready(vsqe_hook *h, HmPicture *out, FILE *f, int shift, const InputPicture *order, int *pulled) {
  int n = 0;
  for (;;) {
    vsqe_hook_picture pic;
    memset(&pic, 0, sizeof pic);
    hm_fill(out, SENTINEL);
    hm_as_picture(out, &pic);
    pic.poc = -999;
    int got = -1;
    const int rc = vsqe_hook_pull(h, &pic, &got);
    CHECK(rc == VSQE_HOOK_OK, "vsqe_hook_pull: %s: %s", vsqe_hook_status_name(rc), vsqe_hook_last_error(h));
    CHECK(got == 0 || got == 1, "got = %d", got);
    if (!got) {
      CHECK(hm_margin_damage(out) == 0, "a pull with nothing ready wrote into the margins");
      CHECK(pic.poc == -999, "a pull with nothing ready changed the picture");
      return n;
    }
    CHECK(hm_margin_damage(out) == 0, "pull wrote %ld samples into the margins", hm_margin_damage(out));
    CHECK(hm_out_of_range(out, (1 << (8 + shift)) - 1) == 0, "pull wrote %ld samples outside the bit depth",
          hm_out_of_range(out, (1 << (8 + shift)) - 1));
    const InputPicture *want = &order[*pulled];
    CHECK(pic.poc == want->poc && pic.slice_qp == want->qp && pic.slice_type == want->type &&
              pic.temporal_layer == want->tlayer,
          "pulled POC %d QP %d type %d tlayer %d, expected POC %d QP %d type %d tlayer %d", pic.poc, pic.slice_qp,
          pic.slice_type, pic.temporal_layer, want->poc, want->qp, want->type, want->tlayer);
    hm_write(out, f, shift);
    ++*pulled;
    ++n;
  }
}

static void run_post(InputPicture *pics, int n, int width, int height, const char *model, int shift, FILE *f) {
  qsort(pics, (size_t)n, sizeof *pics, by_poc); /* HM outputs in POC order */
  vsqe_hook *h = open_or_die(model, width, height, shift, VSQE_HOOK_MODE_POST);
  int delay = -1;
  CHECK(vsqe_hook_get_delay(h, &delay) == VSQE_HOOK_OK && delay >= 0, "vsqe_hook_get_delay: %s", vsqe_hook_last_error(h));
  HmPicture in, in_before, out;
  hm_alloc(&in, width, height);
  hm_alloc(&in_before, width, height);
  hm_alloc(&out, width, height);
  int pulled = 0;
  for (int i = 0; i < n; ++i) {
    vsqe_hook_picture pic;
    hm_load(&in, pics[i].raw, shift);
    hm_copy(&in_before, &in);
    hm_as_picture(&in, &pic);
    pic.poc = pics[i].poc;
    pic.slice_qp = pics[i].qp;
    pic.slice_type = pics[i].type;
    pic.temporal_layer = pics[i].tlayer;
    const int rc = vsqe_hook_push(h, &pic);
    CHECK(rc == VSQE_HOOK_OK, "vsqe_hook_push: %s: %s", vsqe_hook_status_name(rc), vsqe_hook_last_error(h));
    CHECK(hm_equal(&in, &in_before), "vsqe_hook_push changed the pushed picture");
    hm_fill(&in, 0x1234); /* the host reuses its buffer at once: the library must have copied it */
    pull_ready(h, &out, f, shift, pics, &pulled);
    const int expected = i + 1 - delay > 0 ? i + 1 - delay : 0;
    if (g_delay_bound)
      CHECK(pulled >= expected && pulled <= i + 1, "after %d pushes %d pictures were ready, expected at least %d (delay %d)",
            i + 1, pulled, expected, delay);
    else
      CHECK(pulled == expected, "after %d pushes %d pictures were ready, expected %d (delay %d)", i + 1, pulled,
            expected, delay);
  }
  int rc = vsqe_hook_flush(h);
  CHECK(rc == VSQE_HOOK_OK, "vsqe_hook_flush: %s: %s", vsqe_hook_status_name(rc), vsqe_hook_last_error(h));
  pull_ready(h, &out, f, shift, pics, &pulled);
  CHECK(pulled == n, "%d pictures pulled after the flush, expected %d", pulled, n);
  rc = vsqe_hook_close(h);
  CHECK(rc == VSQE_HOOK_OK, "vsqe_hook_close: %s", vsqe_hook_last_error(h));
  hm_free(&in);
  hm_free(&in_before);
  hm_free(&out);
  printf("post: %d pictures, delay %d, margins untouched, samples within %d bits\n", n, delay, 8 + shift);
}

/* ---- in-loop -------------------------------------------------------------------------------- */

static void run_inloop(InputPicture *pics, int n, int width, int height, const char *model, int shift, FILE *f) {
  vsqe_hook *h = open_or_die(model, width, height, shift, VSQE_HOOK_MODE_INLOOP);
  int delay = -1;
  CHECK(vsqe_hook_get_delay(h, &delay) == VSQE_HOOK_OK && delay == 0, "in-loop delay %d", delay);
  HmPicture rec;
  hm_alloc(&rec, width, height);
  long changed = 0;
  for (int i = 0; i < n; ++i) { /* decoding order */
    vsqe_hook_picture pic;
    hm_load(&rec, pics[i].raw, shift);
    hm_as_picture(&rec, &pic);
    pic.poc = pics[i].poc;
    pic.slice_qp = pics[i].qp;
    pic.slice_type = pics[i].type;
    pic.temporal_layer = pics[i].tlayer;
    const int rc = vsqe_hook_filter_inloop(h, &pic);
    CHECK(rc == VSQE_HOOK_OK, "vsqe_hook_filter_inloop: %s: %s", vsqe_hook_status_name(rc), vsqe_hook_last_error(h));
    CHECK(hm_margin_damage(&rec) == 0, "filter_inloop wrote %ld samples into the margins", hm_margin_damage(&rec));
    CHECK(hm_out_of_range(&rec, (1 << (8 + shift)) - 1) == 0, "filter_inloop left %ld samples outside the bit depth",
          hm_out_of_range(&rec, (1 << (8 + shift)) - 1));
    const int16_t *y = hm_addr(&rec, 0);
    for (int r = 0; r < height; ++r)
      for (int x = 0; x < width; ++x) changed += y[(size_t)r * rec.stride[0] + x] != (pics[i].raw[(size_t)r * width + x] << shift);
    hm_write(&rec, f, shift);
  }
  CHECK(changed > 0, "the in-loop filter changed no luma sample");
  const int rc = vsqe_hook_close(h);
  CHECK(rc == VSQE_HOOK_OK, "vsqe_hook_close: %s", vsqe_hook_last_error(h));
  hm_free(&rec);
  printf("inloop: %d pictures filtered in place, margins untouched, samples within %d bits\n", n, 8 + shift);
}

/* ---- the failure contract ------------------------------------------------------------------- */

/* Checks a status and, for a failure, the message that vsqe_hook_last_error(from) gives for it
 * (from == NULL: the thread's global message). The message is read after the call returned. */
static void expect(int rc, int want, const vsqe_hook *from, const char *needle, const char *what) {
  const char *message = vsqe_hook_last_error(from);
  CHECK(rc == want, "%s: returned %s, expected %s (%s)", what, vsqe_hook_status_name(rc), vsqe_hook_status_name(want),
        message);
  if (want != VSQE_HOOK_OK) {
    CHECK(message != NULL && message[0] != '\0', "%s: no error message", what);
    CHECK(needle == NULL || strstr(message, needle) != NULL, "%s: message \"%s\" does not mention \"%s\"", what,
          message, needle);
  }
  printf("ok  %-40s %-20s %s\n", what, vsqe_hook_status_name(rc), want != VSQE_HOOK_OK ? message : "");
}

static int try_open(const char *model, int width, int height, int bit_depth, int chroma, int mode, int sample_bytes,
                    const char *weights, vsqe_hook **h) {
  vsqe_hook_config cfg;
  vsqe_hook_config_init(&cfg);
  cfg.model = model;
  cfg.weights = weights;
  cfg.width = width;
  cfg.height = height;
  cfg.bit_depth = bit_depth;
  cfg.chroma_format = chroma;
  cfg.mode = mode;
  cfg.sample_bytes = sample_bytes;
  cfg.allow_untrained = 1;
  *h = (vsqe_hook *)0x1; /* must be reset to NULL on failure */
  return vsqe_hook_open(&cfg, h);
}

static void run_errors(void) {
  vsqe_hook *h = NULL;
  int rc;
  CHECK(vsqe_hook_version() == VSQE_HOOK_VERSION, "library version %d, header %d", vsqe_hook_version(), VSQE_HOOK_VERSION);
  CHECK(strcmp(vsqe_hook_status_name(VSQE_HOOK_E_CLOSED), "VSQE_HOOK_E_CLOSED") == 0, "status names");
  CHECK(strcmp(vsqe_hook_last_error(NULL), "") == 0, "an error message before any call");

  /* open: arguments checked before the interpreter starts */
  expect(vsqe_hook_open(NULL, &h), VSQE_HOOK_E_ARG, NULL, "NULL", "open(NULL config)");
  vsqe_hook_config cfg;
  memset(&cfg, 0, sizeof cfg);
  expect(vsqe_hook_open(&cfg, &h), VSQE_HOOK_E_ARG, NULL, "vsqe_hook_config_init",
         "open(config not initialised)");
  rc = try_open("stdf", 64, 64, 17, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_INLOOP, 2, NULL, &h);
  CHECK(h == NULL, "a failed open left *out set");
  expect(rc, VSQE_HOOK_E_FORMAT, NULL, "bit depth 17", "open(bit depth 17)");
  expect(try_open("stdf", 64, 64, 8, 7, VSQE_HOOK_MODE_INLOOP, 2, NULL, &h), VSQE_HOOK_E_ARG, NULL,
         "chroma", "open(chroma format 7)");
  expect(try_open("stdf", 64, 64, 8, VSQE_HOOK_CHROMA_420, 5, 2, NULL, &h), VSQE_HOOK_E_ARG, NULL,
         "mode", "open(mode 5)");
  expect(try_open("stdf", 0, 64, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_INLOOP, 2, NULL, &h), VSQE_HOOK_E_FORMAT,
         NULL, "0x64", "open(width 0)");
  expect(try_open("stdf", 64, 64, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_INLOOP, 3, NULL, &h), VSQE_HOOK_E_ARG,
         NULL, "sample_bytes", "open(sample_bytes 3)");

  /* open: checks made in Python (the interpreter starts here) */
  expect(try_open("no-such-model", 64, 64, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h), VSQE_HOOK_E_MODEL,
         NULL, "unknown model", "open(unknown model)");
  CHECK(h == NULL, "a failed open left *out set");
  expect(try_open("stdf", 1, 1, 8, VSQE_HOOK_CHROMA_400, VSQE_HOOK_MODE_POST, 2, NULL, &h), VSQE_HOOK_E_FORMAT,
         NULL, "too small", "open(1x1 picture)");
  expect(try_open("stdf", 65, 64, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h), VSQE_HOOK_E_FORMAT,
         NULL, "65x64", "open(odd width in 4:2:0)");
  expect(try_open("stdf", 64, 64, 16, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h), VSQE_HOOK_E_FORMAT,
         NULL, "int16", "open(16-bit in int16 Pel)");
  expect(try_open("stdf", 64, 64, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, "/nonexistent/w.safetensors", &h),
         VSQE_HOOK_E_MODEL, NULL, "not found", "open(missing weights file)");
  expect(try_open("stdf-rgb", 64, 64, 8, VSQE_HOOK_CHROMA_400, VSQE_HOOK_MODE_POST, 2, NULL, &h), VSQE_HOOK_E_FORMAT,
         NULL, "colour", "open(RGB model on 4:0:0)");
  expect(try_open("mfqev2", 64, 64, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_INLOOP, 2, NULL, &h), VSQE_HOOK_E_MODEL,
         NULL, "use post mode", "open(PQF model in-loop)");
  CHECK(h == NULL, "a failed open left *out set");
  {
    vsqe_hook_config c;
    vsqe_hook_config_init(&c);
    c.width = c.height = 64;
    c.allow_untrained = 1;
    const char *bad[] = {"no_such_option=1", NULL};
    expect(vsqe_hook_open_with_options(&c, bad, &h), VSQE_HOOK_E_ARG, NULL, "unknown option", "open(unknown option)");
    const char *unfit[] = {"pqf_lookahead=4", NULL};
    expect(vsqe_hook_open_with_options(&c, unfit, &h), VSQE_HOOK_E_MODEL, NULL, "does not use PQFs",
           "open(PQF option, stdf)");
  }

  /* calls without a valid handle */
  expect(vsqe_hook_flush(NULL), VSQE_HOOK_E_ARG, NULL, "NULL", "flush(NULL handle)");
  expect(vsqe_hook_close(NULL), VSQE_HOOK_E_ARG, NULL, "NULL", "close(NULL handle)");
  int not_a_handle = 0;
  expect(vsqe_hook_flush((vsqe_hook *)&not_a_handle), VSQE_HOOK_E_ARG, NULL, "not a handle",
         "flush(pointer that is not a handle)");

  /* an in-loop handle: null planes, then a call after that error, then a closed handle */
  rc = try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_INLOOP, 2, NULL, &h);
  CHECK(rc == VSQE_HOOK_OK, "open in-loop: %s", vsqe_hook_last_error(NULL));
  static int16_t y[32 * 32], u[16 * 16], v[16 * 16];
  for (int i = 0; i < 32 * 32; ++i) y[i] = (int16_t)(i % 251);
  for (int i = 0; i < 16 * 16; ++i) u[i] = v[i] = 128;
  vsqe_hook_picture pic = {{y, u, v}, {32, 16, 16}, 0, 37, VSQE_HOOK_SLICE_I, 0};
  rc = vsqe_hook_filter_inloop(h, &pic);
  CHECK(rc == VSQE_HOOK_OK, "filter_inloop: %s", vsqe_hook_last_error(h));
  int got = 0;
  expect(vsqe_hook_push(h, &pic), VSQE_HOOK_E_STATE, h, "post-mode call", "push on an in-loop handle");
  rc = vsqe_hook_close(h);
  CHECK(rc == VSQE_HOOK_OK, "close: %s", vsqe_hook_last_error(h));

  rc = try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_INLOOP, 2, NULL, &h);
  CHECK(rc == VSQE_HOOK_OK, "open in-loop: %s", vsqe_hook_last_error(NULL));
  vsqe_hook_picture bad = pic;
  bad.planes[2] = NULL;
  expect(vsqe_hook_filter_inloop(h, &bad), VSQE_HOOK_E_ARG, h, "planes[2]",
         "filter_inloop(planes[2] NULL)");
  expect(vsqe_hook_filter_inloop(h, &pic), VSQE_HOOK_E_STATE, h, "failed earlier",
         "filter_inloop after an error");
  expect(vsqe_hook_close(h), VSQE_HOOK_OK, h, NULL, "close after an error");
  expect(vsqe_hook_filter_inloop(h, &pic), VSQE_HOOK_E_CLOSED, h, "closed",
         "filter_inloop on a closed handle");
  expect(vsqe_hook_close(h), VSQE_HOOK_E_CLOSED, h, "closed", "close twice");

  /* a post handle: arguments, order of calls */
  rc = try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h);
  CHECK(rc == VSQE_HOOK_OK, "open post: %s", vsqe_hook_last_error(NULL));
  expect(vsqe_hook_filter_inloop(h, &pic), VSQE_HOOK_E_STATE, h, "in-loop-mode call",
         "filter_inloop on a post handle");
  vsqe_hook_close(h);
  rc = try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h);
  CHECK(rc == VSQE_HOOK_OK, "open post: %s", vsqe_hook_last_error(NULL));
  bad = pic;
  bad.strides[0] = 31;
  expect(vsqe_hook_push(h, &bad), VSQE_HOOK_E_ARG, h, "shorter", "push(stride < width)");
  vsqe_hook_close(h);
  rc = try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h);
  CHECK(rc == VSQE_HOOK_OK, "open post: %s", vsqe_hook_last_error(NULL));
  expect(vsqe_hook_pull(h, &pic, NULL), VSQE_HOOK_E_ARG, h, "got", "pull(got NULL)");
  vsqe_hook_close(h);
  rc = try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h);
  CHECK(rc == VSQE_HOOK_OK, "open post: %s", vsqe_hook_last_error(NULL));
  CHECK(vsqe_hook_push(h, &pic) == VSQE_HOOK_OK, "push: %s", vsqe_hook_last_error(h));
  CHECK(vsqe_hook_pull(h, &pic, &got) == VSQE_HOOK_OK && got == 0, "pull before the window is full: got %d", got);
  CHECK(vsqe_hook_flush(h) == VSQE_HOOK_OK, "flush: %s", vsqe_hook_last_error(h));
  expect(vsqe_hook_push(h, &pic), VSQE_HOOK_E_STATE, h, "flush", "push after flush");
  expect(vsqe_hook_close(h), VSQE_HOOK_OK, h, NULL, "close with a picture not pulled");

  /* a closed handle keeps answering */
  expect(vsqe_hook_get_delay(h, &got), VSQE_HOOK_E_CLOSED, h, "closed", "get_delay on a closed handle");
  printf("errors: all checks passed\n");
}

/* Opening without a usable Python is an error with a message, never an abort, and stays one. */
static void run_badenv(void) {
  vsqe_hook *h = NULL;
  for (int i = 0; i < 2; ++i) {
    expect(try_open("stdf", 32, 32, 8, VSQE_HOOK_CHROMA_420, VSQE_HOOK_MODE_POST, 2, NULL, &h), VSQE_HOOK_E_PYTHON, NULL,
           "VSQE_PYTHON", "open without a usable Python");
    CHECK(h == NULL, "a failed open left *out set");
  }
  printf("badenv: all checks passed\n");
}

/* ---- main ----------------------------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr, "usage: test_hook RAW SIDE WIDTH HEIGHT [--post OUT] [--inloop OUT] [--inloop-shift S]\n"
                  "                 [--model M] [--errors] [--weights FILE] [--option KEY=VALUE]... [--delay-bound]\n"
                  "       test_hook errors | badenv\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "errors") == 0) {
    run_errors();
    return 0;
  }
  if (argc == 2 && strcmp(argv[1], "badenv") == 0) {
    run_badenv();
    return 0;
  }
  if (argc < 5) usage();
  const int width = atoi(argv[3]), height = atoi(argv[4]);
  const char *model = "stdf", *post = NULL, *inloop = NULL;
  int shift = 0, errors = 0, n_options = 0;
  for (int i = 5; i < argc; ++i) {
    const int more = i + 1 < argc;
    if (strcmp(argv[i], "--errors") == 0) errors = 1;
    else if (strcmp(argv[i], "--delay-bound") == 0) g_delay_bound = 1;
    else if (more && strcmp(argv[i], "--weights") == 0) g_weights = argv[++i];
    else if (more && n_options < MAX_OPTIONS && strcmp(argv[i], "--option") == 0) g_options[n_options++] = argv[++i];
    else if (more && strcmp(argv[i], "--model") == 0) model = argv[++i];
    else if (more && strcmp(argv[i], "--post") == 0) post = argv[++i];
    else if (more && strcmp(argv[i], "--inloop") == 0) inloop = argv[++i];
    else if (more && strcmp(argv[i], "--inloop-shift") == 0) shift = atoi(argv[++i]);
    else usage();
  }
  CHECK(width > 0 && height > 0 && width % 2 == 0 && height % 2 == 0 && shift >= 0 && shift <= 7, "bad size or shift");
  InputPicture *pics = NULL;
  const int n = read_inputs(argv[1], argv[2], width, height, &pics);
  if (post) { /* one process for all modes: the interpreter and torch start once */
    InputPicture *sorted = (InputPicture *)malloc(sizeof *pics * (size_t)n);
    CHECK(sorted != NULL, "out of memory");
    memcpy(sorted, pics, sizeof *pics * (size_t)n);
    FILE *f = fopen(post, "wb");
    CHECK(f != NULL, "cannot create %s", post);
    run_post(sorted, n, width, height, model, 0, f);
    CHECK(fclose(f) == 0, "cannot write %s", post);
    free(sorted);
  }
  if (inloop) {
    FILE *f = fopen(inloop, "wb");
    CHECK(f != NULL, "cannot create %s", inloop);
    run_inloop(pics, n, width, height, model, shift, f);
    CHECK(fclose(f) == 0, "cannot write %s", inloop);
  }
  if (errors) run_errors();
  for (int i = 0; i < n; ++i) free(pics[i].raw);
  free(pics);
  return 0;
}
