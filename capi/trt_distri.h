/*
 * trt_distri.h - the C API of trt-distri (DistriFusion patch parallelism for diffusion UNets).
 *
 * Link with -ltrt_distri; `python -m trt_distri.capi --cflags --libs` prints the compile line's flags.
 * The library runs the Python runtime of the installed trt-distri package inside this process (it starts an
 * embedded interpreter on first use, or uses the one already running when the host program is Python).
 *
 * ABI: opaque handles, plain C types, option structs that start with their own size (`struct_size`), so that a
 * program compiled against an older header keeps working with a newer library. TRT_DISTRI_ABI_VERSION changes
 * only when that promise is broken.
 *
 * Ownership
 *   - Every handle returned through an `out` pointer belongs to the caller, who releases it with its destroy
 *     function. Destroying NULL is a no-op that returns TRT_DISTRI_OK; destroying twice returns
 *     TRT_DISTRI_ERROR_INVALID_HANDLE (a destroyed handle is never reused, so this is always detected).
 *   - Pointers passed in (paths, prompts, embeddings, option structs) are only read during the call.
 *   - Pointers returned by trt_distri_result_image / _latents point into the result and stay valid until it
 *     is destroyed. Strings from trt_distri_version are static.
 *   - trt_distri_last_error returns a thread-local string, valid until this thread's next trt_distri call.
 *
 * Threading
 *   - Every function may be called from any thread. Calls on the same generator are serialized (a second
 *     generate waits for the first). Different generators may generate concurrently; they share the Python
 *     interpreter, which releases its lock while ONNX Runtime / TensorRT compute.
 *   - Destroying a generator while another thread is inside a call on it is allowed: the call finishes and the
 *     generator is released when it returns. Any later call on the handle fails with INVALID_HANDLE.
 *
 * Blocking
 *   - trt_distri_generator_create blocks while it loads the work directory (all ranks' sessions on the CPU;
 *     on cuda with rank -1, the rank processes it starts, which stay loaded until destroy); the first call in
 *     a process also starts the interpreter and imports the runtime (seconds).
 *   - trt_distri_generate and trt_distri_generate_from_embeddings block for the whole generation.
 *   - trt_distri_generator_destroy blocks while sessions are released (not while another call runs).
 *   - trt_distri_version, trt_distri_abi_version, trt_distri_last_error, trt_distri_status_name and every
 *     trt_distri_result_* function never block and never start the interpreter; trt_distri_generator_get_info
 *     only waits for the interpreter lock.
 *
 * Environment
 *   - TRT_DISTRI_PYTHON: the python executable of the environment where trt-distri is installed (default: the
 *     one next to this library's site-packages, else the one that built it). Only read when this process is
 *     not already running Python.
 *   - RANK/WORLD_SIZE/LOCAL_RANK (torchrun), SLURM_PROCID/..., OMPI_COMM_WORLD_RANK/...: with device "cuda" and
 *     rank -1, they make this process one rank of a multi-process launch.
 */
#ifndef TRT_DISTRI_H
#define TRT_DISTRI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define TRT_DISTRI_API /* Linux only for now */
#else
#define TRT_DISTRI_API __attribute__((visibility("default")))
#endif

#define TRT_DISTRI_ABI_VERSION 1

typedef enum trt_distri_status {
    TRT_DISTRI_OK = 0,
    TRT_DISTRI_ERROR_INVALID_ARGUMENT = 1, /* a NULL pointer, a size or value out of range or not matching the
                                              work directory (e.g. width/height other than its size) */
    TRT_DISTRI_ERROR_INVALID_HANDLE = 2,   /* NULL, destroyed, never created, or a handle of another kind */
    TRT_DISTRI_ERROR_WORK_DIRECTORY = 3,   /* the work directory is missing, unreadable or from another version */
    TRT_DISTRI_ERROR_CONFIG = 4,           /* device, GPUs, ranks or backend do not fit the work directory */
    TRT_DISTRI_ERROR_UNAVAILABLE = 5,      /* not in this work directory or installation (VAE, text encoders) */
    TRT_DISTRI_ERROR_MISSING_PACKAGE = 6,  /* an optional Python package is needed; the message names it */
    TRT_DISTRI_ERROR_RUNTIME = 7,          /* the generation failed (a rank, a backend, a device) */
    TRT_DISTRI_ERROR_PYTHON = 8,           /* the interpreter did not start, or trt_distri is not importable */
    TRT_DISTRI_ERROR_OUT_OF_MEMORY = 9,
    TRT_DISTRI_ERROR_INTERNAL = 10         /* a bug in trt-distri: please report it with the message */
} trt_distri_status;

typedef struct trt_distri_generator trt_distri_generator; /* opaque */
typedef struct trt_distri_result trt_distri_result;       /* opaque */

/* Where and how a generator runs. NULL options = every default. */
typedef struct trt_distri_generator_options {
    size_t struct_size;     /* sizeof(trt_distri_generator_options), set by trt_distri_generator_options_init */
    const char *device;     /* "cpu" (every rank a thread of this process), "cuda", or NULL: cuda when a GPU is
                               visible, else cpu */
    int rank;               /* cuda: this process's world rank, -1: from the launcher's environment if set,
                               else one process per GPU started by this one. cpu: -1 or 0 */
    int world;              /* -1, or the world size (must equal the work directory's) */
    int gpu;                /* cuda, rank >= 0: this rank's GPU; -1: LOCAL_RANK (or equivalent), else rank */
    const char *backend;    /* "ort" (NULL: default), "trt" or "trt-rtx" */
    const char *rendezvous; /* cuda, rank >= 0: a directory every rank can read, where NCCL ids are exchanged */
} trt_distri_generator_options;

/* One generation. NULL params = every default. */
typedef struct trt_distri_generate_params {
    size_t struct_size;    /* sizeof(trt_distri_generate_params), set by trt_distri_generate_params_init */
    int steps;             /* denoising steps, 1..1000 (default 30) */
    float guidance;        /* classifier-free guidance scale (default 5.0) */
    uint64_t seed;         /* initial noise seed (default 0) */
    const char *scheduler; /* "ddim" (NULL: default), "euler" or "dpm++" */
    int warmup_steps;      /* synchronous steps after step 0 (default 4) */
    int width, height;     /* 0: the work directory's size; anything else must equal it */
    const float *latents;  /* NULL: initial noise from `seed`. Else the initial noise itself, as diffusers'
                              latents= (before the scheduler's init_noise_sigma scaling): latent_channels x
                              latent_height x latent_width fp32, row-major (trt_distri_generator_get_info), finite.
                              Read during the call only. Appended to the struct after the first release: a
                              program built against an older header passes a smaller struct_size and gets the
                              seed's noise */
} trt_distri_generate_params;

/* Text conditioning computed elsewhere (row-major fp32, host memory). */
typedef struct trt_distri_embeddings {
    size_t struct_size;            /* sizeof(trt_distri_embeddings) */
    const float *cond;             /* (seq_len, dim): the prompt's text-encoder hidden states */
    const float *uncond;           /* (seq_len, dim): the negative prompt's; NULL only for a work directory
                                      exported without guidance */
    int seq_len, dim;              /* must equal the work directory's (77 and the UNet's cross-attention dim) */
    const float *pooled;           /* SDXL: (pooled_dim) pooled text embedding of the prompt; else NULL */
    const float *negative_pooled;  /* SDXL with guidance: the negative prompt's; else NULL */
    int pooled_dim;                /* SDXL: the UNet's text_embeds size; else 0 */
    const float *time_ids;         /* SDXL: 6 floats (original size, crop top-left, target size); NULL: from the
                                      image size with no crop */
} trt_distri_embeddings;

/* What a work directory expects and produces (filled by trt_distri_generator_get_info). */
typedef struct trt_distri_generator_info {
    size_t struct_size;  /* sizeof(trt_distri_generator_info), set by trt_distri_generator_info_init */
    int width, height;   /* the image size the work directory was exported for */
    int latent_channels, latent_height, latent_width;
    int seq_len, dim;    /* text embeddings: (seq_len, dim) per branch */
    int pooled_dim;      /* SDXL: size of the pooled text embedding; 0 for SD 1.x/2.x */
    int guidance;        /* 1: exported with classifier-free guidance (uncond is required), else 0 */
    int world;           /* ranks (GPUs) the work directory is exported for */
} trt_distri_generator_info;

static inline void trt_distri_generator_options_init(trt_distri_generator_options *o) {
    trt_distri_generator_options d = {sizeof(trt_distri_generator_options), NULL, -1, -1, -1, NULL, NULL};
    *o = d;
}

static inline void trt_distri_generate_params_init(trt_distri_generate_params *p) {
    trt_distri_generate_params d = {sizeof(trt_distri_generate_params), 30, 5.0f, 0, NULL, 4, 0, 0, NULL};
    *p = d;
}

static inline void trt_distri_embeddings_init(trt_distri_embeddings *e) {
    trt_distri_embeddings d = {sizeof(trt_distri_embeddings), NULL, NULL, 0, 0, NULL, NULL, 0, NULL};
    *e = d;
}

static inline void trt_distri_generator_info_init(trt_distri_generator_info *i) {
    trt_distri_generator_info d = {sizeof(trt_distri_generator_info), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    *i = d;
}

/* "0.1.0": the version of the library (and of the package it was built with). Static string. */
TRT_DISTRI_API const char *trt_distri_version(void);
/* TRT_DISTRI_ABI_VERSION of the library; compare with the header's. */
TRT_DISTRI_API int trt_distri_abi_version(void);
/* Why this thread's most recent call failed ("" after a success). Thread-local; valid until the next call. */
TRT_DISTRI_API const char *trt_distri_last_error(void);
/* "TRT_DISTRI_ERROR_INVALID_ARGUMENT", ...; static. */
TRT_DISTRI_API const char *trt_distri_status_name(trt_distri_status status);

/* Load `workdir` (a directory written by `trt-distri export`, optionally built with `trt-distri build`). */
TRT_DISTRI_API trt_distri_status trt_distri_generator_create(const char *workdir,
                                                             const trt_distri_generator_options *options,
                                                             trt_distri_generator **out);
TRT_DISTRI_API trt_distri_status trt_distri_generator_destroy(trt_distri_generator *generator);

/* Sizes of the generator's work directory (fields beyond info->struct_size are left alone). Does not wait for
   a generation in progress. */
TRT_DISTRI_API trt_distri_status trt_distri_generator_get_info(trt_distri_generator *generator,
                                                               trt_distri_generator_info *info);

/* LoRA adapters (docs/lora.md): apply exactly these `count` .safetensors files (diffusers/PEFT or kohya, UNet
   layers only), paths[i] with scales[i], to the UNet of every rank, in place, until the next call; the weights
   become W = W0 + sum(scales[i] * update_i). count 0 (paths and scales may then be NULL) restores the base
   weights, as trt_distri_generator_clear_loras does. Needs built engines (`trt-distri build`). Blocks while
   every rank writes its weights; waits for a generation in progress. A file that does not fit the work
   directory returns TRT_DISTRI_ERROR_INVALID_ARGUMENT (or CONFIG) naming its first unmatched key, and the weights
   stay as they were. paths and scales are only read during the call. */
TRT_DISTRI_API trt_distri_status trt_distri_generator_set_loras(trt_distri_generator *generator,
                                                                const char *const *paths, const float *scales,
                                                                size_t count);
/* The base weights again, bit for bit. */
TRT_DISTRI_API trt_distri_status trt_distri_generator_clear_loras(trt_distri_generator *generator);

/* Prompt -> image; needs a work directory with text encoders and a VAE (`trt-distri export` with a pipeline).
   negative_prompt may be NULL (""). */
TRT_DISTRI_API trt_distri_status trt_distri_generate(trt_distri_generator *generator, const char *prompt,
                                                     const char *negative_prompt,
                                                     const trt_distri_generate_params *params,
                                                     trt_distri_result **out);
/* Precomputed text embeddings -> latents (and the image where the work directory has a VAE). */
TRT_DISTRI_API trt_distri_status trt_distri_generate_from_embeddings(trt_distri_generator *generator,
                                                                     const trt_distri_embeddings *embeddings,
                                                                     const trt_distri_generate_params *params,
                                                                     trt_distri_result **out);

/* The image: height x width x 3 bytes, RGB, row-major, owned by the result. TRT_DISTRI_ERROR_UNAVAILABLE
   (with the reason) when the result has only latents. Any of the out pointers may be NULL. */
TRT_DISTRI_API trt_distri_status trt_distri_result_image(const trt_distri_result *result, const uint8_t **pixels,
                                                         int *width, int *height);
/* The final latents (unscaled by the VAE factor), fp32, shape[0..3] = (1, channels, height/8, width/8), owned
   by the result. TRT_DISTRI_ERROR_UNAVAILABLE on ranks that do not receive them (world rank > 0 on cuda). */
TRT_DISTRI_API trt_distri_status trt_distri_result_latents(const trt_distri_result *result, const float **data,
                                                           int64_t shape[4]);
/* Seconds the generation took. */
TRT_DISTRI_API trt_distri_status trt_distri_result_seconds(const trt_distri_result *result, double *seconds);
TRT_DISTRI_API trt_distri_status trt_distri_result_destroy(trt_distri_result *result);

#ifdef __cplusplus
}
#endif
#endif /* TRT_DISTRI_H */
