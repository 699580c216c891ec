"""Window assembly, tiling and the enhancer: shared by the CLI, the VapourSynth filter and the hook."""
