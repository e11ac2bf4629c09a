// Loading NVIDIA math libraries at run time: neither the build machines nor CI have their
// headers or libraries, so cuSOLVER and cuBLAS are dlopen()ed where the GPU machine has them
// (the loader's search path, PyTorch's pip wheels, the CUDA toolkit). Loaded libraries stay
// loaded until exit: unloading one while the CUDA runtime holds its kernels is unsafe.
#pragma once
#include <dlfcn.h>
#include <glob.h>

#include <cstdlib>
#include <mutex>
#include <string>

namespace fp4::cuda {

struct DynLib {
  void *handle = nullptr;
  std::string where;  // the path it was loaded from, or why it could not be loaded
};

// Opens $env_var when set (and nothing else), else the first of `sonames` the loader finds,
// else the first file matching lib<name>.so* in the folders where pip wheels and the CUDA
// toolkit put it. Libraries in the same folder named by `deps` are loaded first (globally), in
// case the library's RUNPATH does not name its own folder.
inline DynLib open_nvidia_library(const char *name, const char *env_var,
                                  std::initializer_list<const char *> sonames,
                                  std::initializer_list<const char *> deps) {
  auto first_match = [](const std::string &pattern) {
    glob_t g{};
    std::string out;
    if (glob(pattern.c_str(), 0, nullptr, &g) == 0 && g.gl_pathc > 0) out = g.gl_pathv[0];
    globfree(&g);
    return out;
  };
  auto open_path = [&](const std::string &path) {
    const size_t slash = path.rfind('/');
    if (slash != std::string::npos) {
      for (const char *dep : deps) {
        const std::string d = first_match(path.substr(0, slash + 1) + dep + ".so*");
        if (!d.empty()) dlopen(d.c_str(), RTLD_NOW | RTLD_GLOBAL);
      }
    }
    return dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  };
  DynLib lib;
  std::string errors;
  const char *env = std::getenv(env_var);
  if (env && *env) {
    if ((lib.handle = open_path(env))) lib.where = env;
    else lib.where = std::string(name) + " not loaded from $" + env_var + ": " + dlerror();
    return lib;
  }
  for (const char *so : sonames) {
    if ((lib.handle = dlopen(so, RTLD_NOW | RTLD_LOCAL))) {
      lib.where = so;
      return lib;
    }
  }
  const std::string file = std::string("lib") + name + ".so*";
  for (const char *dir : {"/opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib/",
                          "/usr/local/lib/python3*/dist-packages/nvidia/cu13/lib/",
                          "/opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib/",
                          "/usr/local/cuda/lib64/"}) {
    const std::string path = first_match(dir + file);
    if (path.empty()) continue;
    if ((lib.handle = open_path(path))) {
      lib.where = path;
      return lib;
    }
    errors += std::string(dlerror()) + "; ";
  }
  lib.where = std::string(name) + " not loaded: " + errors +
              "not in the loader's path, the PyTorch wheels or /usr/local/cuda (set " + env_var +
              " to its lib" + name + ".so)";
  return lib;
}

// The process-wide API table of a runtime-loaded library, filled by Load on first use.
template <class Api, void (*Load)(Api &)>
Api &loaded_once() {
  static Api api;
  static std::once_flag once;
  std::call_once(once, [] { Load(api); });
  return api;
}

}  // namespace fp4::cuda
