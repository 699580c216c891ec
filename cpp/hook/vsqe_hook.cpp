// libvsqe_hook: the C ABI of vsqe_hook.h over an embedded Python interpreter running vsqe.hook.
//
// Every exported function is a firewall. It catches every C++ exception, turns Python exceptions
// into status codes (the mapping is vsqe.hook.error_status), stores a one-line message, and never
// calls exit() or abort(). Python work runs under PyGILState_Ensure. The interpreter is started
// at most once per process (never if the host already runs Python) and is never finalised,
// because torch does not survive re-initialisation.
//
// Host buffers reach Python as writable memoryviews spanning exactly the visible area (first to
// last visible sample). vsqe.hook makes strided numpy views of them. After each call the
// memoryviews are released, so no Python object can reach host memory afterwards.

#define VSQE_HOOK_BUILD 1
#include "vsqe_hook.h"

#include <pybind11/pybind11.h>

#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <unordered_set>
#include <vector>

namespace py = pybind11;

#ifndef VSQE_HOOK_DEFAULT_PYTHON
#define VSQE_HOOK_DEFAULT_PYTHON ""
#endif

namespace {
enum class State { Open, Failed, Closed };
}

struct vsqe_hook {
  std::mutex mutex;
  State state = State::Open;
  int mode = VSQE_HOOK_MODE_POST;
  int planes = 3;
  int sample_bytes = 2;
  int delay = 0;
  long widths[3] = {0, 0, 0};
  long heights[3] = {0, 0, 0};
  PyObject *session = nullptr;  // vsqe.hook.HookSession, owned; touched only with the GIL
  std::string error;            // last failure
  std::string first_error;      // the failure that put the handle in State::Failed
};

namespace {

// Failures of vsqe_hook_open, and of calls given a null or unknown handle, on this thread.
thread_local std::string t_error;

// Every handle ever returned. Closed handles stay as tombstones, so a stale pointer is recognised
// and never aliases a newer handle. Leaked on purpose: no destructor runs at process exit.
std::mutex &handles_mutex() {
  static std::mutex *m = new std::mutex;
  return *m;
}
std::unordered_set<const vsqe_hook *> &handles() {
  static auto *set = new std::unordered_set<const vsqe_hook *>;
  return *set;
}
bool is_handle(const vsqe_hook *h) {
  std::lock_guard<std::mutex> lock(handles_mutex());
  return handles().count(h) != 0;
}

// ---- the interpreter -----------------------------------------------------------------------------

std::mutex g_start_mutex;
bool g_started = false;
std::string g_start_error;  // a failed start is final: Python cannot be initialised twice

std::string first_line(const std::string &text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.empty() ? text : line;
}

bool is_dir(const std::string &path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// $VSQE_PYTHON (a venv folder or its python), else the interpreter that built the library.
std::string python_executable(std::string &origin) {
  const char *env = std::getenv("VSQE_PYTHON");
  std::string path;
  if (env && *env) {
    path = env;
    origin = "VSQE_PYTHON";
  } else {
    path = VSQE_HOOK_DEFAULT_PYTHON;
    origin = "the Python recorded when libvsqe_hook was built";
  }
  if (!path.empty() && is_dir(path)) path += "/bin/python";
  return path;
}

// Extension modules (numpy, torch) expect libpython's symbols in the global namespace. A host
// that dlopen()ed this library with RTLD_LOCAL would hide them, so promote libpython to global.
void promote_libpython() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&Py_IsInitialized), &info) && info.dli_fname) {
    dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);  // keeps a reference: never unloaded
  }
}

int start_python(std::string &err) {
  std::lock_guard<std::mutex> lock(g_start_mutex);
  if (g_started) return VSQE_HOOK_OK;
  if (!g_start_error.empty()) {
    err = g_start_error;
    return VSQE_HOOK_E_PYTHON;
  }
  if (Py_IsInitialized()) {  // the host runs Python already: use its interpreter as it is
    g_started = true;
    return VSQE_HOOK_OK;
  }
  promote_libpython();
  std::string origin;
  const std::string exe = python_executable(origin);
  if (!exe.empty() && access(exe.c_str(), X_OK) != 0) {
    g_start_error = "Python not found at " + exe + " (" + origin +
                    "); set VSQE_PYTHON to the venv where vsqe is installed";
    err = g_start_error;
    return VSQE_HOOK_E_PYTHON;
  }
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // SIGINT and friends stay the host's
  config.parse_argv = 0;
  PyStatus status = PyStatus_Ok();
  if (!exe.empty()) {
    // The venv's python as the executable: getpath finds its pyvenv.cfg, so sys.prefix is the
    // venv and site adds its site-packages (and runs its .pth files, e.g. an editable vsqe).
    status = PyConfig_SetBytesString(&config, &config.program_name, exe.c_str());
    if (!PyStatus_Exception(status)) status = PyConfig_SetBytesString(&config, &config.executable, exe.c_str());
  }
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    g_start_error = std::string("cannot start the embedded Python (") + exe + "): " +
                    (status.func ? std::string(status.func) + ": " : std::string()) +
                    (status.err_msg ? status.err_msg : "unknown error");
    err = g_start_error;
    return VSQE_HOOK_E_PYTHON;
  }
  PyEval_SaveThread();  // release the GIL; every call takes it with PyGILState_Ensure
  g_started = true;
  return VSQE_HOOK_OK;
}

struct Gil {
  PyGILState_STATE state;
  Gil() : state(PyGILState_Ensure()) {}
  ~Gil() { PyGILState_Release(state); }
  Gil(const Gil &) = delete;
  Gil &operator=(const Gil &) = delete;
};

// Status and one-line message for a Python exception (GIL held).
int python_failure(py::error_already_set &e, std::string &msg) {
  try {
    py::tuple r = py::module_::import("vsqe.hook").attr("error_status")(e.value());
    msg = r[0].cast<int>() == VSQE_HOOK_OK ? std::string("unknown error") : r[1].cast<std::string>();
    return r[0].cast<int>();
  } catch (...) {
    msg = first_line(e.what());
    return VSQE_HOOK_E_INTERNAL;
  }
}

// ---- pictures ------------------------------------------------------------------------------------

int check_picture(const vsqe_hook *h, const vsqe_hook_picture *pic, const char *name, std::string &msg) {
  if (!pic) {
    msg = std::string(name) + " is NULL";
    return VSQE_HOOK_E_ARG;
  }
  static const char *const kPlane[3] = {"Y", "Cb", "Cr"};
  for (int c = 0; c < h->planes; ++c) {
    if (!pic->planes[c]) {
      msg = std::string(name) + "->planes[" + std::to_string(c) + "] (" + kPlane[c] + ") is NULL";
      return VSQE_HOOK_E_ARG;
    }
    if (pic->strides[c] < h->widths[c]) {
      msg = std::string(name) + "->strides[" + std::to_string(c) + "] is " + std::to_string(pic->strides[c]) +
            ", shorter than the plane's width " + std::to_string(h->widths[c]) + " (strides are in samples)";
      return VSQE_HOOK_E_ARG;
    }
    const long double bytes =
        ((long double)(h->heights[c] - 1) * pic->strides[c] + h->widths[c]) * h->sample_bytes;
    if (bytes > (long double)std::numeric_limits<Py_ssize_t>::max()) {
      msg = std::string(name) + "->strides[" + std::to_string(c) + "] is too large";
      return VSQE_HOOK_E_ARG;
    }
  }
  return VSQE_HOOK_OK;
}

// Memoryviews over the visible area of each plane, and the strides (GIL held).
struct Views {
  py::list planes;
  py::list strides;
  std::vector<py::object> owned;
};

Views make_views(const vsqe_hook *h, const vsqe_hook_picture *pic, bool writable) {
  Views v;
  for (int c = 0; c < h->planes; ++c) {
    const Py_ssize_t bytes = ((Py_ssize_t)(h->heights[c] - 1) * pic->strides[c] + h->widths[c]) * h->sample_bytes;
    py::object mv = py::memoryview::from_memory(pic->planes[c], bytes, /*readonly=*/!writable);
    v.owned.push_back(mv);
    v.planes.append(mv);
    v.strides.append(py::int_((Py_ssize_t)pic->strides[c]));
  }
  return v;
}

// Releases the memoryviews; fails if Python still holds a view of the host's memory (a bug).
int release_views(Views &v, std::string &msg) {
  int rc = VSQE_HOOK_OK;
  v.planes = py::list();
  for (py::object &mv : v.owned) {
    if (PyObject *r = PyObject_CallMethod(mv.ptr(), "release", nullptr)) {
      Py_DECREF(r);
    } else {
      PyErr_Clear();
      msg = "internal error: a view of the host's picture outlived the call";
      rc = VSQE_HOOK_E_INTERNAL;
    }
  }
  v.owned.clear();
  return rc;
}

// Runs `body` on an open handle: checks, locking, the sticky failed state, every exception.
template <class Body>
int with_handle(vsqe_hook *h, const char *what, Body &&body) {
  try {
    if (!h) {
      t_error = std::string(what) + ": the handle is NULL";
      return VSQE_HOOK_E_ARG;
    }
    if (!is_handle(h)) {
      t_error = std::string(what) + ": not a handle returned by vsqe_hook_open";
      return VSQE_HOOK_E_ARG;
    }
    std::lock_guard<std::mutex> lock(h->mutex);
    if (h->state == State::Closed) {
      h->error = std::string(what) + ": the handle is closed";
      return VSQE_HOOK_E_CLOSED;
    }
    if (h->state == State::Failed) {
      h->error = std::string(what) + ": the handle failed earlier (" + h->first_error + "); close it";
      return VSQE_HOOK_E_STATE;
    }
    std::string msg;
    int rc;
    try {
      rc = body(msg);
    } catch (const std::bad_alloc &) {
      rc = VSQE_HOOK_E_INTERNAL;
      msg = "out of memory";
    } catch (const std::exception &e) {
      rc = VSQE_HOOK_E_INTERNAL;
      msg = first_line(e.what());
    } catch (...) {
      rc = VSQE_HOOK_E_INTERNAL;
      msg = "unknown C++ exception";
    }
    if (rc != VSQE_HOOK_OK) {
      h->error = std::string(what) + ": " + (msg.empty() ? "failed" : msg);
      h->first_error = h->error;
      h->state = State::Failed;
    }
    return rc;
  } catch (...) {  // even a failing std::string must not escape into C
    return VSQE_HOOK_E_INTERNAL;
  }
}

// Calls session.<method>(planes, strides, *args) with views of `pic`; result in *result (GIL held).
template <class... Args>
int call_with_picture(vsqe_hook *h, const char *method, const vsqe_hook_picture *pic, bool writable,
                      std::string &msg, py::object *result, Args... args) {
  Views views;
  int rc = VSQE_HOOK_OK;
  try {
    views = make_views(h, pic, writable);
    py::object r = py::reinterpret_borrow<py::object>(h->session).attr(method)(views.planes, views.strides, args...);
    if (result) *result = std::move(r);
  } catch (py::error_already_set &e) {
    rc = python_failure(e, msg);
  }
  std::string release_msg;
  if (release_views(views, release_msg) != VSQE_HOOK_OK && rc == VSQE_HOOK_OK) {
    rc = VSQE_HOOK_E_INTERNAL;
    msg = release_msg;
  }
  return rc;
}

const char *const kStatusNames[] = {
    "VSQE_HOOK_OK",         "VSQE_HOOK_E_ARG",    "VSQE_HOOK_E_FORMAT", "VSQE_HOOK_E_MODEL",
    "VSQE_HOOK_E_BACKEND",  "VSQE_HOOK_E_STATE",  "VSQE_HOOK_E_CLOSED", "VSQE_HOOK_E_PYTHON",
    "VSQE_HOOK_E_INTERNAL",
};

}  // namespace

// ---- the C ABI -----------------------------------------------------------------------------------

extern "C" {

VSQE_HOOK_API int vsqe_hook_version(void) { return VSQE_HOOK_VERSION; }

VSQE_HOOK_API const char *vsqe_hook_status_name(int status) {
  if (status <= 0 && status >= VSQE_HOOK_E_INTERNAL) return kStatusNames[-status];
  return "VSQE_HOOK_UNKNOWN_STATUS";
}

VSQE_HOOK_API void vsqe_hook_config_init(vsqe_hook_config *cfg) {
  if (!cfg) return;
  cfg->struct_size = sizeof(vsqe_hook_config);
  cfg->model = "stdf";
  cfg->weights = nullptr;
  cfg->backend = nullptr;
  cfg->width = 0;
  cfg->height = 0;
  cfg->bit_depth = 8;
  cfg->chroma_format = VSQE_HOOK_CHROMA_420;
  cfg->mode = VSQE_HOOK_MODE_POST;
  cfg->sample_bytes = 2;
  cfg->threads = 0;
  cfg->allow_untrained = 0;
}

VSQE_HOOK_API const char *vsqe_hook_last_error(const vsqe_hook *h) {
  try {
    if (h && is_handle(h)) {
      vsqe_hook *m = const_cast<vsqe_hook *>(h);
      std::lock_guard<std::mutex> lock(m->mutex);
      return m->error.c_str();
    }
    return t_error.c_str();
  } catch (...) {
    return "vsqe_hook: cannot read the error message";
  }
}

static int open_handle(const vsqe_hook_config *cfg, const char *const *options, vsqe_hook **out) {
  try {
    t_error.clear();
    if (out) *out = nullptr;
    if (!cfg || !out) {
      t_error = "vsqe_hook_open: cfg or out is NULL";
      return VSQE_HOOK_E_ARG;
    }
    if (cfg->struct_size < sizeof(vsqe_hook_config)) {
      t_error = "vsqe_hook_open: cfg->struct_size is " + std::to_string(cfg->struct_size) +
                "; fill the config with vsqe_hook_config_init first";
      return VSQE_HOOK_E_ARG;
    }
    // Range checks that need no model, before the interpreter starts. vsqe.hook repeats them for
    // Python callers and adds those that do.
    if (cfg->mode != VSQE_HOOK_MODE_POST && cfg->mode != VSQE_HOOK_MODE_INLOOP) {
      t_error = "vsqe_hook_open: unknown mode " + std::to_string(cfg->mode) + " (0 = post, 1 = in-loop)";
      return VSQE_HOOK_E_ARG;
    }
    if (cfg->chroma_format < VSQE_HOOK_CHROMA_400 || cfg->chroma_format > VSQE_HOOK_CHROMA_444) {
      t_error = "vsqe_hook_open: unknown chroma format " + std::to_string(cfg->chroma_format);
      return VSQE_HOOK_E_ARG;
    }
    if (cfg->sample_bytes != 2 && cfg->sample_bytes != 4) {
      t_error = "vsqe_hook_open: sample_bytes must be 2 (int16 Pel) or 4 (int32 Pel), got " +
                std::to_string(cfg->sample_bytes);
      return VSQE_HOOK_E_ARG;
    }
    if (cfg->bit_depth < 8 || cfg->bit_depth > 16) {
      t_error = "vsqe_hook_open: bit depth " + std::to_string(cfg->bit_depth) + " is not supported (8 to 16)";
      return VSQE_HOOK_E_FORMAT;
    }
    if (cfg->width <= 0 || cfg->height <= 0) {
      t_error = "vsqe_hook_open: picture size " + std::to_string(cfg->width) + "x" + std::to_string(cfg->height) +
                " is not supported";
      return VSQE_HOOK_E_FORMAT;
    }
    std::string msg;
    int rc = start_python(msg);
    if (rc != VSQE_HOOK_OK) {
      t_error = "vsqe_hook_open: " + msg;
      return rc;
    }
    auto *h = new (std::nothrow) vsqe_hook;
    if (!h) {
      t_error = "vsqe_hook_open: out of memory";
      return VSQE_HOOK_E_INTERNAL;
    }
    {
      Gil gil;
      try {
        py::module_ hook;
        try {
          hook = py::module_::import("vsqe.hook");
        } catch (py::error_already_set &e) {
          std::string origin;
          const std::string exe = python_executable(origin);
          msg = "cannot import vsqe.hook: " + first_line(e.what()) + " (Python " +
                (exe.empty() ? std::string("default") : exe) + "; set VSQE_PYTHON to the venv where vsqe is installed)";
          rc = VSQE_HOOK_E_PYTHON;
        }
        if (rc == VSQE_HOOK_OK) {
          py::object none = py::none();
          py::list opts;
          for (const char *const *o = options; o && *o; ++o) opts.append(py::str(*o));
          py::object session = hook.attr("HookSession")(
              cfg->model ? py::str(cfg->model) : py::str("stdf"),
              cfg->weights ? py::object(py::str(cfg->weights)) : none,
              cfg->backend ? py::object(py::str(cfg->backend)) : none, cfg->width, cfg->height, cfg->bit_depth,
              cfg->chroma_format, cfg->mode, cfg->sample_bytes, cfg->threads > 0 ? py::object(py::int_(cfg->threads)) : none,
              cfg->allow_untrained != 0, opts);
          py::list shapes = session.attr("shapes");
          h->planes = (int)py::len(shapes);
          for (int c = 0; c < h->planes && c < 3; ++c) {
            py::tuple shape = shapes[c];
            h->heights[c] = shape[0].cast<long>();
            h->widths[c] = shape[1].cast<long>();
          }
          h->delay = session.attr("delay").cast<int>();
          h->session = session.release().ptr();
        }
      } catch (py::error_already_set &e) {
        rc = python_failure(e, msg);
      } catch (const py::cast_error &e) {
        rc = VSQE_HOOK_E_INTERNAL;
        msg = first_line(e.what());
      }
    }
    if (rc != VSQE_HOOK_OK) {
      delete h;
      t_error = "vsqe_hook_open: " + msg;
      return rc;
    }
    h->mode = cfg->mode;
    h->sample_bytes = cfg->sample_bytes;
    {
      std::lock_guard<std::mutex> lock(handles_mutex());
      handles().insert(h);
    }
    *out = h;
    return VSQE_HOOK_OK;
  } catch (const std::bad_alloc &) {
    t_error = "vsqe_hook_open: out of memory";
  } catch (const std::exception &e) {
    t_error = std::string("vsqe_hook_open: ") + first_line(e.what());
  } catch (...) {
    t_error = "vsqe_hook_open: unknown C++ exception";
  }
  return VSQE_HOOK_E_INTERNAL;
}

VSQE_HOOK_API int vsqe_hook_open(const vsqe_hook_config *cfg, vsqe_hook **out) {
  return open_handle(cfg, nullptr, out);
}

VSQE_HOOK_API int vsqe_hook_open_with_options(const vsqe_hook_config *cfg, const char *const *options,
                                              vsqe_hook **out) {
  return open_handle(cfg, options, out);
}

VSQE_HOOK_API int vsqe_hook_close(vsqe_hook *h) {
  try {
    if (!h) {
      t_error = "vsqe_hook_close: the handle is NULL";
      return VSQE_HOOK_E_ARG;
    }
    if (!is_handle(h)) {
      t_error = "vsqe_hook_close: not a handle returned by vsqe_hook_open";
      return VSQE_HOOK_E_ARG;
    }
    std::lock_guard<std::mutex> lock(h->mutex);
    if (h->state == State::Closed) {
      h->error = "vsqe_hook_close: the handle is closed already";
      return VSQE_HOOK_E_CLOSED;
    }
    h->state = State::Closed;
    int rc = VSQE_HOOK_OK;
    if (h->session) {
      Gil gil;
      std::string msg;
      try {
        py::reinterpret_borrow<py::object>(h->session).attr("close")();
      } catch (py::error_already_set &e) {
        rc = python_failure(e, msg);
        h->error = "vsqe_hook_close: " + msg;
      }
      Py_CLEAR(h->session);
    }
    return rc;
  } catch (...) {
    return VSQE_HOOK_E_INTERNAL;
  }
}

VSQE_HOOK_API int vsqe_hook_get_delay(vsqe_hook *h, int *delay) {
  return with_handle(h, "vsqe_hook_get_delay", [&](std::string &msg) -> int {
    if (!delay) {
      msg = "delay is NULL";
      return VSQE_HOOK_E_ARG;
    }
    *delay = h->delay;
    return VSQE_HOOK_OK;
  });
}

VSQE_HOOK_API int vsqe_hook_filter_inloop(vsqe_hook *h, const vsqe_hook_picture *pic) {
  return with_handle(h, "vsqe_hook_filter_inloop", [&](std::string &msg) -> int {
    int rc = check_picture(h, pic, "pic", msg);
    if (rc != VSQE_HOOK_OK) return rc;
    Gil gil;
    return call_with_picture(h, "filter_inloop", pic, /*writable=*/true, msg, nullptr, pic->poc, pic->slice_qp,
                             pic->slice_type, pic->temporal_layer);
  });
}

VSQE_HOOK_API int vsqe_hook_push(vsqe_hook *h, const vsqe_hook_picture *pic) {
  return with_handle(h, "vsqe_hook_push", [&](std::string &msg) -> int {
    int rc = check_picture(h, pic, "pic", msg);
    if (rc != VSQE_HOOK_OK) return rc;
    Gil gil;
    return call_with_picture(h, "push", pic, /*writable=*/false, msg, nullptr, pic->poc, pic->slice_qp,
                             pic->slice_type, pic->temporal_layer);
  });
}

VSQE_HOOK_API int vsqe_hook_pull(vsqe_hook *h, vsqe_hook_picture *out, int *got) {
  return with_handle(h, "vsqe_hook_pull", [&](std::string &msg) -> int {
    if (!got) {
      msg = "got is NULL";
      return VSQE_HOOK_E_ARG;
    }
    *got = 0;
    int rc = check_picture(h, out, "out", msg);
    if (rc != VSQE_HOOK_OK) return rc;
    Gil gil;
    py::object result;
    rc = call_with_picture(h, "pull", out, /*writable=*/true, msg, &result);
    if (rc == VSQE_HOOK_OK && result && !result.is_none()) {
      try {
        py::tuple side = result;
        out->poc = side[0].cast<int>();
        out->slice_qp = side[1].cast<int>();
        out->slice_type = side[2].cast<int>();
        out->temporal_layer = side[3].cast<int>();
        *got = 1;
      } catch (const std::exception &e) {
        msg = std::string("internal error: ") + first_line(e.what());
        rc = VSQE_HOOK_E_INTERNAL;
      }
    }
    result = py::object();
    return rc;
  });
}

VSQE_HOOK_API int vsqe_hook_flush(vsqe_hook *h) {
  return with_handle(h, "vsqe_hook_flush", [&](std::string &msg) -> int {
    Gil gil;
    try {
      py::reinterpret_borrow<py::object>(h->session).attr("flush")();
    } catch (py::error_already_set &e) {
      return python_failure(e, msg);
    }
    return VSQE_HOOK_OK;
  });
}

}  // extern "C"
