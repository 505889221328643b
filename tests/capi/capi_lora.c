/* LoRA through the C API, driven by tests/capi/test_capi.py. usage: capi_lora UNET_WORKDIR LORA_FILE.
   Prints "ok NAME" or "FAIL NAME: ..." per check; exits 1 on a FAIL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trt_distri.h"

static int failures;

static void expect(const char *name, trt_distri_status got, trt_distri_status want, const char *in_message) {
    const char *msg = trt_distri_last_error();
    int ok = got == want && (in_message == NULL || strstr(msg, in_message) != NULL);
    if (ok) printf("ok %s\n", name);
    else printf("FAIL %s: got %s (%s), expected %s with \"%s\"\n", name, trt_distri_status_name(got), msg,
                trt_distri_status_name(want), in_message ? in_message : "");
    failures += !ok;
}

/* The latents of one short generation from zero embeddings (malloc'ed copy; *n floats). */
static float *latents(trt_distri_generator *gen, size_t *n) {
    trt_distri_generator_info info;
    trt_distri_generator_info_init(&info);
    trt_distri_generator_get_info(gen, &info);
    trt_distri_embeddings e;
    trt_distri_embeddings_init(&e);
    e.seq_len = info.seq_len, e.dim = info.dim;
    float *zeros = calloc((size_t)info.seq_len * info.dim, sizeof(float));
    e.cond = zeros, e.uncond = info.guidance ? zeros : NULL;
    trt_distri_generate_params p;
    trt_distri_generate_params_init(&p);
    p.steps = 3, p.warmup_steps = 1;
    trt_distri_result *r = NULL;
    expect("generate", trt_distri_generate_from_embeddings(gen, &e, &p, &r), TRT_DISTRI_OK, NULL);
    const float *data = NULL;
    int64_t shape[4] = {0, 0, 0, 0};
    trt_distri_result_latents(r, &data, shape);
    *n = (size_t)(shape[0] * shape[1] * shape[2] * shape[3]);
    float *copy = malloc(*n * sizeof(float) + 1);
    if (data != NULL) memcpy(copy, data, *n * sizeof(float));
    trt_distri_result_destroy(r);
    free(zeros);
    return copy;
}

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: %s UNET_WORKDIR LORA_FILE\n", argv[0]), 2;
    trt_distri_generator_options o;
    trt_distri_generator_options_init(&o);
    o.device = "cpu";
    trt_distri_generator *gen = NULL;
    expect("create", trt_distri_generator_create(argv[1], &o, &gen), TRT_DISTRI_OK, NULL);
    const char *missing[] = {"/nonexistent/lora.safetensors"}, *paths[] = {argv[2]};
    const float scales[] = {1.0f};
    expect("null_paths", trt_distri_generator_set_loras(gen, NULL, scales, 1), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "paths is NULL");
    expect("missing_file", trt_distri_generator_set_loras(gen, missing, scales, 1), TRT_DISTRI_ERROR_CONFIG,
           "does not exist");
    expect("null_generator", trt_distri_generator_set_loras(NULL, paths, scales, 1), TRT_DISTRI_ERROR_INVALID_HANDLE,
           NULL);
    size_t n = 0, m = 0, k = 0;
    float *base = latents(gen, &n);
    expect("set_loras", trt_distri_generator_set_loras(gen, paths, scales, 1), TRT_DISTRI_OK, NULL);
    float *with_lora = latents(gen, &m);
    expect("clear_loras", trt_distri_generator_clear_loras(gen), TRT_DISTRI_OK, NULL);
    float *cleared = latents(gen, &k);
    int changed = n == m && memcmp(base, with_lora, n * sizeof(float)) != 0;
    int restored = n == k && n > 0 && memcmp(base, cleared, n * sizeof(float)) == 0;
    printf("%s lora_changes_latents\n%s clear_restores_bit_for_bit\n", changed ? "ok" : "FAIL",
           restored ? "ok" : "FAIL");
    failures += !changed + !restored;
    free(base), free(with_lora), free(cleared);
    expect("destroy", trt_distri_generator_destroy(gen), TRT_DISTRI_OK, NULL);
    return failures ? 1 : 0;
}
