/* The public functions of trt_distri.h: argument checks and handles here, the work in python.c. */
#include <stdlib.h>

#include "internal.h"

#ifndef TRT_DISTRI_VERSION
#error "TRT_DISTRI_VERSION must be defined by the build (setup.py)"
#endif

#define TD_MAX_STRUCT 4096 /* a struct_size above this is garbage, not a newer header */

const char *trt_distri_version(void) { return TRT_DISTRI_VERSION; }

int trt_distri_abi_version(void) { return TRT_DISTRI_ABI_VERSION; }

static trt_distri_status check_struct(const void *ptr, size_t struct_size, const char *what, const char *init) {
    if (ptr != NULL && (struct_size < sizeof(size_t) + sizeof(void *) || struct_size > TD_MAX_STRUCT))
        return td_fail(TRT_DISTRI_ERROR_INVALID_ARGUMENT,
                       "%s->struct_size is %zu. Note: expected sizeof(%s) set by %s(). Fix: call %s() first", what,
                       struct_size, what, init, init);
    return TRT_DISTRI_OK;
}

static trt_distri_status null_argument(const char *function, const char *name) {
    return td_fail(TRT_DISTRI_ERROR_INVALID_ARGUMENT, "%s: %s is NULL. Note: expected a valid pointer", function,
                   name);
}

static trt_distri_status invalid_handle(const char *function, const void *handle, const char *kind) {
    const char *creator = kind[0] == 'g' ? "trt_distri_generator_create" : "trt_distri_generate*";
    return td_fail(TRT_DISTRI_ERROR_INVALID_HANDLE,
                   "%s: %p is not a live %s (NULL, destroyed, or never created). Note: expected a handle from %s "
                   "that was not destroyed", function, handle, kind, creator);
}

trt_distri_status trt_distri_generator_create(const char *workdir, const trt_distri_generator_options *options,
                                              trt_distri_generator **out) {
    if (out == NULL) return null_argument(__func__, "out");
    *out = NULL;
    if (workdir == NULL) return null_argument(__func__, "workdir");
    trt_distri_status s = check_struct(options, options ? options->struct_size : 0, "trt_distri_generator_options",
                                       "trt_distri_generator_options_init");
    void *generator = NULL;
    if (s == TRT_DISTRI_OK) s = td_py_create(workdir, options, &generator);
    if (s != TRT_DISTRI_OK) return s;
    void *handle = td_handle_new(TD_GENERATOR, generator, td_py_close);
    if (handle == NULL) {
        td_py_close(generator);
        return td_fail(TRT_DISTRI_ERROR_OUT_OF_MEMORY, "%s: out of memory for the handle", __func__);
    }
    *out = handle;
    return td_ok();
}

trt_distri_status trt_distri_generator_destroy(trt_distri_generator *generator) {
    if (generator == NULL) return td_ok();
    trt_distri_status freed;
    if (!td_handle_destroy(generator, TD_GENERATOR, &freed)) return invalid_handle(__func__, generator, "generator");
    return freed == TRT_DISTRI_OK ? td_ok() : freed;
}

trt_distri_status trt_distri_generator_get_info(trt_distri_generator *generator, trt_distri_generator_info *info) {
    if (info == NULL) return null_argument(__func__, "info");
    trt_distri_status s = check_struct(info, info->struct_size, "trt_distri_generator_info",
                                       "trt_distri_generator_info_init");
    if (s != TRT_DISTRI_OK) return s;
    void *object = td_handle_acquire(generator, TD_GENERATOR);
    if (object == NULL) return invalid_handle(__func__, generator, "generator");
    int v[10];
    s = td_py_info(object, v);
    td_handle_release(generator);
    if (s != TRT_DISTRI_OK) return s;
    typedef trt_distri_generator_info T;
    TD_SET(info, T, width, v[0]);
    TD_SET(info, T, height, v[1]);
    TD_SET(info, T, latent_channels, v[2]);
    TD_SET(info, T, latent_height, v[3]);
    TD_SET(info, T, latent_width, v[4]);
    TD_SET(info, T, seq_len, v[5]);
    TD_SET(info, T, dim, v[6]);
    TD_SET(info, T, pooled_dim, v[7]);
    TD_SET(info, T, guidance, v[8]);
    TD_SET(info, T, world, v[9]);
    return td_ok();
}

trt_distri_status trt_distri_generator_set_loras(trt_distri_generator *generator, const char *const *paths,
                                                const float *scales, size_t count) {
    if (count > 0 && paths == NULL) return null_argument(__func__, "paths");
    if (count > 0 && scales == NULL) return null_argument(__func__, "scales");
    for (size_t i = 0; i < count; i++)
        if (paths[i] == NULL)
            return td_fail(TRT_DISTRI_ERROR_INVALID_ARGUMENT, "%s: paths[%zu] is NULL. Note: expected %zu paths",
                           __func__, i, count);
    void *object = td_handle_acquire(generator, TD_GENERATOR);
    if (object == NULL) return invalid_handle(__func__, generator, "generator");
    trt_distri_status s = td_py_set_loras(object, paths, scales, count);
    td_handle_release(generator);
    return s == TRT_DISTRI_OK ? td_ok() : s;
}

trt_distri_status trt_distri_generator_clear_loras(trt_distri_generator *generator) {
    return trt_distri_generator_set_loras(generator, NULL, NULL, 0);
}

/* Checks shared by both generate functions; on success *object is acquired (release it). */
static trt_distri_status begin(const char *function, trt_distri_generator *generator,
                               const trt_distri_generate_params *params, trt_distri_result **out, void **object) {
    if (out == NULL) return null_argument(function, "out");
    *out = NULL;
    trt_distri_status s = check_struct(params, params ? params->struct_size : 0, "trt_distri_generate_params",
                                       "trt_distri_generate_params_init");
    if (s != TRT_DISTRI_OK) return s;
    *object = td_handle_acquire(generator, TD_GENERATOR);
    return *object ? TRT_DISTRI_OK : invalid_handle(function, generator, "generator");
}

/* Wrap a finished td_result in a handle (or free it). */
static trt_distri_status finish(trt_distri_generator *generator, trt_distri_status s, td_result *result,
                                trt_distri_result **out) {
    td_handle_release(generator);
    if (s != TRT_DISTRI_OK) return s;
    void *handle = td_handle_new(TD_RESULT, result, td_result_free);
    if (handle == NULL) {
        td_result_free(result);
        return td_fail(TRT_DISTRI_ERROR_OUT_OF_MEMORY, "out of memory for the result handle");
    }
    *out = handle;
    return td_ok();
}

trt_distri_status trt_distri_generate(trt_distri_generator *generator, const char *prompt,
                                      const char *negative_prompt, const trt_distri_generate_params *params,
                                      trt_distri_result **out) {
    void *object = NULL;
    trt_distri_status s = begin(__func__, generator, params, out, &object);
    if (s != TRT_DISTRI_OK) return s;
    td_result *result = NULL;
    s = prompt == NULL ? null_argument(__func__, "prompt")
                       : td_py_generate(object, prompt, negative_prompt, params, &result);
    return finish(generator, s, result, out);
}

static trt_distri_status check_embeddings(const trt_distri_embeddings *e) {
    if (e == NULL) return null_argument("trt_distri_generate_from_embeddings", "embeddings");
    trt_distri_status s = check_struct(e, e->struct_size, "trt_distri_embeddings", "trt_distri_embeddings_init");
    if (s != TRT_DISTRI_OK) return s;
    if (e->struct_size < offsetof(trt_distri_embeddings, time_ids) + sizeof(e->time_ids))
        return td_fail(TRT_DISTRI_ERROR_INVALID_ARGUMENT, "embeddings->struct_size is %zu. Note: expected %zu",
                       e->struct_size, sizeof(trt_distri_embeddings));
    if (e->cond == NULL) return null_argument("trt_distri_generate_from_embeddings", "embeddings->cond");
    if (e->seq_len <= 0 || e->dim <= 0 || (int64_t)e->seq_len * e->dim > (1 << 28))
        return td_fail(TRT_DISTRI_ERROR_INVALID_ARGUMENT,
                       "invalid embedding size. Note: expected seq_len > 0 and dim > 0 (the work directory's), got "
                       "seq_len %d, dim %d", e->seq_len, e->dim);
    if ((e->pooled != NULL || e->negative_pooled != NULL) && (e->pooled_dim <= 0 || e->pooled_dim > (1 << 20)))
        return td_fail(TRT_DISTRI_ERROR_INVALID_ARGUMENT,
                       "invalid pooled_dim. Note: expected the size of pooled (> 0), got %d", e->pooled_dim);
    if (e->negative_pooled != NULL && e->pooled == NULL)
        return null_argument("trt_distri_generate_from_embeddings", "embeddings->pooled (negative_pooled is set)");
    return TRT_DISTRI_OK;
}

trt_distri_status trt_distri_generate_from_embeddings(trt_distri_generator *generator,
                                                      const trt_distri_embeddings *embeddings,
                                                      const trt_distri_generate_params *params,
                                                      trt_distri_result **out) {
    void *object = NULL;
    trt_distri_status s = begin(__func__, generator, params, out, &object);
    if (s != TRT_DISTRI_OK) return s;
    td_result *result = NULL;
    s = check_embeddings(embeddings);
    if (s == TRT_DISTRI_OK) s = td_py_generate_from_embeddings(object, embeddings, params, &result);
    return finish(generator, s, result, out);
}

/* ---- results: plain C memory, read without the interpreter ------------------------------------------------ */
trt_distri_status td_result_free(void *object) {
    td_result *r = object;
    free(r->latents), free(r->latents_missing), free(r->image), free(r->image_missing);
    free(r);
    return TRT_DISTRI_OK;
}

/* The result behind a handle, acquired; NULL after setting the error. */
static td_result *acquire_result(const char *function, const trt_distri_result *result) {
    td_result *r = td_handle_acquire(result, TD_RESULT);
    if (r == NULL) invalid_handle(function, result, "result");
    return r;
}

trt_distri_status trt_distri_result_image(const trt_distri_result *result, const uint8_t **pixels, int *width,
                                          int *height) {
    td_result *r = acquire_result(__func__, result);
    if (r == NULL) return TRT_DISTRI_ERROR_INVALID_HANDLE;
    trt_distri_status s = r->image ? td_ok() : td_fail(TRT_DISTRI_ERROR_UNAVAILABLE, "%s", r->image_missing);
    if (pixels) *pixels = r->image;
    if (width) *width = r->image ? r->width : 0;
    if (height) *height = r->image ? r->height : 0;
    td_handle_release(result);
    return s;
}

trt_distri_status trt_distri_result_latents(const trt_distri_result *result, const float **data,
                                            int64_t shape[4]) {
    td_result *r = acquire_result(__func__, result);
    if (r == NULL) return TRT_DISTRI_ERROR_INVALID_HANDLE;
    trt_distri_status s = r->latents ? td_ok() : td_fail(TRT_DISTRI_ERROR_UNAVAILABLE, "%s", r->latents_missing);
    if (data) *data = r->latents;
    for (int i = 0; shape && i < 4; i++) shape[i] = r->latents ? r->shape[i] : 0;
    td_handle_release(result);
    return s;
}

trt_distri_status trt_distri_result_seconds(const trt_distri_result *result, double *seconds) {
    td_result *r = acquire_result(__func__, result);
    if (r == NULL) return TRT_DISTRI_ERROR_INVALID_HANDLE;
    if (seconds) *seconds = r->seconds;
    td_handle_release(result);
    return td_ok();
}

trt_distri_status trt_distri_result_destroy(trt_distri_result *result) {
    if (result == NULL) return td_ok();
    trt_distri_status freed;
    if (!td_handle_destroy(result, TD_RESULT, &freed)) return invalid_handle(__func__, result, "result");
    return td_ok();
}
