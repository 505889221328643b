/* Error paths, handle lifetime and resource release of libtrt_distri.so, driven by tests/capi/test_capi.py.
   usage: capi_checks UNET_WORKDIR CYCLES. Prints one line per check ("ok NAME" or "FAIL NAME: ..."), then
   "fds BEFORE AFTER" and "rss_kb BEFORE AFTER" around CYCLES create/generate/destroy cycles; exits 1 on a FAIL. */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trt_distri.h"

static int failures;

static void expect(const char *name, trt_distri_status got, trt_distri_status want, const char *in_message) {
    const char *msg = trt_distri_last_error();
    int ok = got == want && (in_message == NULL || strstr(msg, in_message) != NULL) &&
             (want == TRT_DISTRI_OK || msg[0] != '\0');
    if (ok) printf("ok %s\n", name);
    else printf("FAIL %s: got %s (%s), expected %s with \"%s\"\n", name, trt_distri_status_name(got), msg,
                trt_distri_status_name(want), in_message ? in_message : "");
    failures += !ok;
}

static long count_fds(void) {
    long n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d && (e = readdir(d));) n += e->d_name[0] != '.';
    if (d) closedir(d);
    return n;
}

static long rss_kb(void) {
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

static float *zeros(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

/* Embeddings of the generator's shapes (zeros): the caller frees e->cond etc. with free_embeddings. */
static void make_embeddings(trt_distri_generator *gen, trt_distri_embeddings *e) {
    trt_distri_generator_info info;
    trt_distri_generator_info_init(&info);
    trt_distri_generator_get_info(gen, &info);
    trt_distri_embeddings_init(e);
    e->seq_len = info.seq_len, e->dim = info.dim, e->pooled_dim = info.pooled_dim;
    e->cond = zeros((size_t)info.seq_len * info.dim);
    e->uncond = info.guidance ? zeros((size_t)info.seq_len * info.dim) : NULL;
    e->pooled = info.pooled_dim ? zeros(info.pooled_dim) : NULL;
    e->negative_pooled = info.pooled_dim && info.guidance ? zeros(info.pooled_dim) : NULL;
}

static void free_embeddings(trt_distri_embeddings *e) {
    free((void *)e->cond), free((void *)e->uncond), free((void *)e->pooled), free((void *)e->negative_pooled);
}

static trt_distri_generate_params quick(void) {
    trt_distri_generate_params p;
    trt_distri_generate_params_init(&p);
    p.steps = 3, p.warmup_steps = 1;
    return p;
}

static trt_distri_generator *create(const char *workdir) {
    trt_distri_generator_options o;
    trt_distri_generator_options_init(&o);
    o.device = "cpu";
    trt_distri_generator *gen = NULL;
    expect("create", trt_distri_generator_create(workdir, &o, &gen), TRT_DISTRI_OK, NULL);
    return gen;
}

static trt_distri_status generate(trt_distri_generator *gen, trt_distri_result **out) {
    trt_distri_embeddings e;
    make_embeddings(gen, &e);
    trt_distri_generate_params p = quick();
    trt_distri_status s = trt_distri_generate_from_embeddings(gen, &e, &p, out);
    free_embeddings(&e);
    return s;
}

static void *other_thread(void *arg) {
    *(int *)arg = trt_distri_last_error()[0] == '\0';
    return NULL;
}

static void check_arguments(const char *workdir) {
    trt_distri_generator *gen = NULL;
    trt_distri_generator_options o;
    trt_distri_generator_options_init(&o);
    expect("create_null_out", trt_distri_generator_create(workdir, NULL, NULL), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "out is NULL");
    expect("create_null_workdir", trt_distri_generator_create(NULL, NULL, &gen), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "workdir is NULL");
    expect("create_wrong_workdir", trt_distri_generator_create("/nonexistent/work", NULL, &gen),
           TRT_DISTRI_ERROR_WORK_DIRECTORY, "manifest.json does not exist");
    int clean = 0;
    pthread_t t;
    pthread_create(&t, NULL, other_thread, &clean);
    pthread_join(t, NULL);
    expect("last_error_is_thread_local", clean ? TRT_DISTRI_OK : TRT_DISTRI_ERROR_INTERNAL, TRT_DISTRI_OK, NULL);
    o.struct_size = 0;
    expect("create_options_not_initialized", trt_distri_generator_create(workdir, &o, &gen),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "struct_size");
    trt_distri_generator_options_init(&o);
    o.device = "tpu";
    expect("create_unknown_device", trt_distri_generator_create(workdir, &o, &gen),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "unknown device");
    expect("create_failure_leaves_null", gen == NULL ? TRT_DISTRI_OK : TRT_DISTRI_ERROR_INTERNAL, TRT_DISTRI_OK, NULL);
}

static void check_generate_errors(trt_distri_generator *gen) {
    trt_distri_result *r = NULL;
    trt_distri_embeddings e;
    make_embeddings(gen, &e);
    trt_distri_generate_params p = quick();
    expect("generate_null_out", trt_distri_generate_from_embeddings(gen, &e, &p, NULL),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "out is NULL");
    expect("generate_null_embeddings", trt_distri_generate_from_embeddings(gen, NULL, &p, &r),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "embeddings is NULL");
    expect("generate_null_generator", trt_distri_generate_from_embeddings(NULL, &e, &p, &r),
           TRT_DISTRI_ERROR_INVALID_HANDLE, "not a live generator");
    expect("generate_garbage_handle", trt_distri_generate_from_embeddings((trt_distri_generator *)0x1234, &e, &p, &r),
           TRT_DISTRI_ERROR_INVALID_HANDLE, "not a live generator");
    expect("generate_null_prompt", trt_distri_generate(gen, NULL, NULL, &p, &r), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "prompt is NULL");
    expect("prompt_without_text_encoders", trt_distri_generate(gen, "a cat", NULL, &p, &r),
           TRT_DISTRI_ERROR_UNAVAILABLE, "no text encoders");
    p.width = 100;
    expect("invalid_size", trt_distri_generate_from_embeddings(gen, &e, &p, &r), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "invalid size");
    p = quick(), p.steps = 0;
    expect("invalid_steps", trt_distri_generate_from_embeddings(gen, &e, &p, &r), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "invalid steps");
    p = quick(), p.guidance = NAN;
    expect("invalid_guidance", trt_distri_generate_from_embeddings(gen, &e, &p, &r), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "invalid guidance");
    p = quick();
    expect("prompt_not_utf8", trt_distri_generate(gen, "\xff\xfe", NULL, &p, &r), TRT_DISTRI_ERROR_INVALID_ARGUMENT,
           "not valid UTF-8");
    expect("negative_prompt_not_utf8", trt_distri_generate(gen, "a cat", "\xc3", &p, &r),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "not valid UTF-8");
    p = quick(), p.scheduler = "lms";
    expect("unknown_scheduler", trt_distri_generate_from_embeddings(gen, &e, &p, &r),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "unknown scheduler");
    p = quick(), e.seq_len += 1;
    expect("wrong_embedding_shape", trt_distri_generate_from_embeddings(gen, &e, &p, &r),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "wrong shape");
    e.seq_len -= 1, e.dim = 0;
    expect("invalid_embedding_size", trt_distri_generate_from_embeddings(gen, &e, &p, &r),
           TRT_DISTRI_ERROR_INVALID_ARGUMENT, "invalid embedding size");
    expect("failure_leaves_null", r == NULL ? TRT_DISTRI_OK : TRT_DISTRI_ERROR_INTERNAL, TRT_DISTRI_OK, NULL);
    free_embeddings(&e);
}

static void check_results(trt_distri_generator *gen) {
    trt_distri_result *r = NULL;
    expect("generate", generate(gen, &r), TRT_DISTRI_OK, NULL);
    const float *latents = NULL;
    int64_t shape[4] = {0};
    expect("latents", trt_distri_result_latents(r, &latents, shape), TRT_DISTRI_OK, NULL);
    expect("latents_shape", latents && shape[0] == 1 && shape[1] == 4 ? TRT_DISTRI_OK : TRT_DISTRI_ERROR_INTERNAL,
           TRT_DISTRI_OK, NULL);
    const uint8_t *pixels = NULL;
    expect("image_without_vae", trt_distri_result_image(r, &pixels, NULL, NULL), TRT_DISTRI_ERROR_UNAVAILABLE,
           "no VAE in this work directory");
    expect("result_as_generator", trt_distri_generator_destroy((trt_distri_generator *)r),
           TRT_DISTRI_ERROR_INVALID_HANDLE, "not a live generator");
    expect("result_destroy", trt_distri_result_destroy(r), TRT_DISTRI_OK, NULL);
    expect("result_after_destroy", trt_distri_result_latents(r, &latents, shape), TRT_DISTRI_ERROR_INVALID_HANDLE,
           "not a live result");
    expect("result_destroy_twice", trt_distri_result_destroy(r), TRT_DISTRI_ERROR_INVALID_HANDLE, "not a live result");
    expect("destroy_null", trt_distri_result_destroy(NULL), TRT_DISTRI_OK, NULL);
}

static void check_after_destroy(trt_distri_generator *gen) {
    trt_distri_result *r = NULL;
    expect("destroy", trt_distri_generator_destroy(gen), TRT_DISTRI_OK, NULL);
    expect("generate_after_destroy", generate(gen, &r), TRT_DISTRI_ERROR_INVALID_HANDLE, "not a live generator");
    trt_distri_generator_info info;
    trt_distri_generator_info_init(&info);
    expect("info_after_destroy", trt_distri_generator_get_info(gen, &info), TRT_DISTRI_ERROR_INVALID_HANDLE,
           "destroyed");
    expect("destroy_twice", trt_distri_generator_destroy(gen), TRT_DISTRI_ERROR_INVALID_HANDLE, "not a live");
}

static void check_cycles(const char *workdir, int cycles) {
    long fds = 0, rss = 0;
    for (int i = 0; i < cycles + 2; i++) {
        if (i == 2) fds = count_fds(), rss = rss_kb(); /* after two warm-up cycles (imports, caches) */
        trt_distri_generator *gen = create(workdir);
        trt_distri_result *r = NULL;
        if (gen && generate(gen, &r) == TRT_DISTRI_OK) trt_distri_result_destroy(r);
        trt_distri_generator_destroy(gen);
    }
    printf("fds %ld %ld\nrss_kb %ld %ld\n", fds, count_fds(), rss, rss_kb());
}

int main(int argc, char **argv) {
    if (argc < 3) return fprintf(stderr, "usage: %s UNET_WORKDIR CYCLES\n", argv[0]), 2;
    expect("abi", trt_distri_abi_version() == TRT_DISTRI_ABI_VERSION ? TRT_DISTRI_OK : TRT_DISTRI_ERROR_INTERNAL,
           TRT_DISTRI_OK, NULL);
    printf("version %s\n", trt_distri_version());
    check_arguments(argv[1]);
    trt_distri_generator *first = create(argv[1]), *second = create(argv[1]); /* two at once, both work */
    check_generate_errors(first);
    check_results(first);
    check_after_destroy(first);
    check_results(second); /* still works after the first is gone */
    check_after_destroy(second);
    trt_distri_generator *third = create(argv[1]); /* created after both were destroyed */
    check_results(third);
    trt_distri_generator_destroy(third);
    check_cycles(argv[1], atoi(argv[2]));
    return failures ? 1 : 0;
}
