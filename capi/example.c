/*
 * example.c - generate with trt-distri from C.
 *
 *   cc capi/example.c $(python -m trt_distri.capi --cflags --libs) -o trt_distri_example
 *   ./trt_distri_example WORKDIR OUT [PROMPT]
 *
 * With PROMPT: prompt -> image (needs a work directory with text encoders and a VAE), written to OUT.ppm.
 * Without: deterministic text embeddings (the formula in fill() below) -> latents, written to OUT.npy, and the
 * image to OUT.ppm when the work directory has a VAE. Prints one line per file and exits 0, or prints the error
 * and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trt_distri.h"

static int fail(const char *what, trt_distri_status status) {
    fprintf(stderr, "error: %s: %s: %s\n", what, trt_distri_status_name(status), trt_distri_last_error());
    return 1;
}

/* Exactly representable in float32 (integers, then one correctly rounded division), so that any language
   computes the same values: v[i] = ((i * step + offset) % 101) / 50 - 1. */
static float *fill(size_t n, unsigned step, unsigned offset) {
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; v != NULL && i < n; i++) v[i] = (float)((i * step + offset) % 101) / 50.0f - 1.0f;
    return v;
}

static int write_ppm(const char *path, const uint8_t *rgb, int width, int height) {
    FILE *f = fopen(path, "wb");
    if (f == NULL) return perror(path), 1;
    fprintf(f, "P6\n%d %d\n255\n", width, height);
    size_t n = (size_t)width * height * 3, written = fwrite(rgb, 1, n, f);
    return (fclose(f) != 0 || written != n) ? (perror(path), 1) : 0;
}

/* A .npy file (version 1.0) of little-endian float32 (x86-64, aarch64). */
static int write_npy(const char *path, const float *data, const int64_t shape[4]) {
    char header[128];
    int len = snprintf(header, sizeof(header), "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld, "
                       "%lld, %lld), }", (long long)shape[0], (long long)shape[1], (long long)shape[2],
                       (long long)shape[3]);
    int padded = ((10 + len + 1 + 63) / 64) * 64 - 10; /* magic + version + length: 10 bytes */
    FILE *f = fopen(path, "wb");
    if (f == NULL) return perror(path), 1;
    unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, padded & 0xff, padded >> 8};
    fwrite(preamble, 1, 10, f);
    fprintf(f, "%s%*s\n", header, padded - len - 1, "");
    size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    size_t written = fwrite(data, sizeof(float), n, f);
    return (fclose(f) != 0 || written != n) ? (perror(path), 1) : 0;
}

/* Latents to OUT.npy (when present) and the image to OUT.ppm (when present, or required). */
static int save(trt_distri_result *result, const char *out, int need_image) {
    char path[4096];
    const float *latents;
    int64_t shape[4];
    if (trt_distri_result_latents(result, &latents, shape) == TRT_DISTRI_OK) {
        snprintf(path, sizeof(path), "%s.npy", out);
        if (write_npy(path, latents, shape)) return 1;
        printf("latents %lldx%lldx%lldx%lld -> %s\n", (long long)shape[0], (long long)shape[1],
               (long long)shape[2], (long long)shape[3], path);
    }
    const uint8_t *pixels;
    int width, height;
    trt_distri_status s = trt_distri_result_image(result, &pixels, &width, &height);
    if (s != TRT_DISTRI_OK) {
        if (need_image) return fail("image", s);
        printf("no image: %s\n", trt_distri_last_error());
        return 0;
    }
    snprintf(path, sizeof(path), "%s.ppm", out);
    if (write_ppm(path, pixels, width, height)) return 1;
    printf("image %dx%d -> %s\n", width, height, path);
    return 0;
}

static trt_distri_status from_embeddings(trt_distri_generator *gen, const trt_distri_generate_params *params,
                                         trt_distri_result **result) {
    trt_distri_generator_info info;
    trt_distri_generator_info_init(&info);
    trt_distri_status s = trt_distri_generator_get_info(gen, &info);
    if (s != TRT_DISTRI_OK) return s;
    size_t tokens = (size_t)info.seq_len * info.dim;
    trt_distri_embeddings e;
    trt_distri_embeddings_init(&e);
    float *cond = fill(tokens, 7, 1), *uncond = info.guidance ? fill(tokens, 13, 5) : NULL;
    float *pooled = info.pooled_dim ? fill(info.pooled_dim, 3, 2) : NULL;
    float *negative = info.pooled_dim && info.guidance ? fill(info.pooled_dim, 11, 9) : NULL;
    e.cond = cond, e.uncond = uncond, e.seq_len = info.seq_len, e.dim = info.dim;
    e.pooled = pooled, e.negative_pooled = negative, e.pooled_dim = info.pooled_dim;
    s = trt_distri_generate_from_embeddings(gen, &e, params, result);
    free(cond), free(uncond), free(pooled), free(negative);
    return s;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s WORKDIR OUT [PROMPT]\n", argv[0]);
        return 2;
    }
    printf("trt-distri %s (ABI %d)\n", trt_distri_version(), trt_distri_abi_version());
    trt_distri_generator_options options;
    trt_distri_generator_options_init(&options);
    options.device = "cpu"; /* every rank a thread of this process; "cuda" or NULL for GPUs */
    trt_distri_generator *gen = NULL;
    trt_distri_status s = trt_distri_generator_create(argv[1], &options, &gen);
    if (s != TRT_DISTRI_OK) return fail("create", s);

    trt_distri_generate_params params;
    trt_distri_generate_params_init(&params);
    params.steps = 8, params.seed = 42, params.warmup_steps = 2;
    trt_distri_result *result = NULL;
    s = argc > 3 ? trt_distri_generate(gen, argv[3], NULL, &params, &result) : from_embeddings(gen, &params, &result);
    int rc = s != TRT_DISTRI_OK ? fail("generate", s) : save(result, argv[2], argc > 3);
    double seconds = 0;
    if (rc == 0 && trt_distri_result_seconds(result, &seconds) == TRT_DISTRI_OK)
        printf("generated in %.2f s\n", seconds);
    trt_distri_result_destroy(result);
    trt_distri_generator_destroy(gen);
    return rc;
}
