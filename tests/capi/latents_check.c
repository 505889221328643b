/* trt_distri_generate_params.latents, driven by tests/capi/test_capi.py.
   usage: latents_check UNET_WORKDIR LATENTS_IN OUT_GIVEN OUT_OLD_STRUCT
   Reads latent_channels x latent_height x latent_width floats from LATENTS_IN; generates 2 steps from zero
   embeddings with them as the initial latents (seed 0) into OUT_GIVEN, and with a struct_size of a header that
   predates the field (latents set but beyond struct_size, so ignored; seed 7) into OUT_OLD_STRUCT; then checks
   that NaN latents are refused. Outputs are raw fp32 latents. Exits 1 on any failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trt_distri.h"

static int fail(const char *what, trt_distri_status s) {
    fprintf(stderr, "%s: %s: %s\n", what, trt_distri_status_name(s), trt_distri_last_error());
    return 1;
}

static int write_latents(trt_distri_generator *g, const trt_distri_embeddings *e,
                         const trt_distri_generate_params *p, const char *path) {
    trt_distri_result *r = NULL;
    trt_distri_status s = trt_distri_generate_from_embeddings(g, e, p, &r);
    if (s != TRT_DISTRI_OK) return fail("generate", s);
    const float *data = NULL;
    int64_t shape[4];
    s = trt_distri_result_latents(r, &data, shape);
    if (s != TRT_DISTRI_OK) return fail("latents", s);
    size_t n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    FILE *f = fopen(path, "wb");
    int bad = f == NULL || fwrite(data, sizeof(float), n, f) != n;
    if (f) fclose(f);
    trt_distri_result_destroy(r);
    return bad ? fail(path, TRT_DISTRI_ERROR_RUNTIME) : 0;
}

int main(int argc, char **argv) {
    if (argc < 5) return fprintf(stderr, "usage: %s WORKDIR LATENTS_IN OUT_GIVEN OUT_OLD_STRUCT\n", argv[0]), 2;
    trt_distri_generator_options o;
    trt_distri_generator_options_init(&o);
    o.device = "cpu";
    trt_distri_generator *g = NULL;
    trt_distri_status s = trt_distri_generator_create(argv[1], &o, &g);
    if (s != TRT_DISTRI_OK) return fail("create", s);
    trt_distri_generator_info info;
    trt_distri_generator_info_init(&info);
    trt_distri_generator_get_info(g, &info);
    size_t n = (size_t)info.latent_channels * info.latent_height * info.latent_width;
    size_t tokens = (size_t)info.seq_len * info.dim;
    float *latents = malloc(n * sizeof(float)), *zeros = calloc(tokens, sizeof(float));
    FILE *f = fopen(argv[2], "rb");
    if (!latents || !zeros || !f || fread(latents, sizeof(float), n, f) != n)
        return fail(argv[2], TRT_DISTRI_ERROR_RUNTIME);
    fclose(f);
    trt_distri_embeddings e;
    trt_distri_embeddings_init(&e);
    e.cond = zeros, e.uncond = info.guidance ? zeros : NULL, e.seq_len = info.seq_len, e.dim = info.dim;
    trt_distri_generate_params p;
    trt_distri_generate_params_init(&p);
    p.steps = 2, p.latents = latents;
    int bad = write_latents(g, &e, &p, argv[3]);
    p.struct_size = offsetof(trt_distri_generate_params, latents), p.seed = 7;
    bad |= write_latents(g, &e, &p, argv[4]);
    p.struct_size = sizeof(p), latents[n / 2] = NAN;
    trt_distri_result *r = NULL;
    s = trt_distri_generate_from_embeddings(g, &e, &p, &r);
    if (s != TRT_DISTRI_ERROR_INVALID_ARGUMENT || strstr(trt_distri_last_error(), "NaN") == NULL)
        bad |= fail("NaN latents not refused", s);
    trt_distri_generator_destroy(g);
    free(latents), free(zeros);
    return bad;
}
