/* Internal declarations of libtrt_distri.so (not installed). */
#ifndef TRT_DISTRI_INTERNAL_H
#define TRT_DISTRI_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "trt_distri.h"

/* ---- errors.c: the thread-local last error ---------------------------------------------------------------- */
trt_distri_status td_fail(trt_distri_status status, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
trt_distri_status td_ok(void);

/* ---- handles.c: opaque handles are ids in a registry, so a stale or foreign handle is detected, never used ---- */
typedef enum { TD_GENERATOR = 1, TD_RESULT = 2 } td_kind;
typedef trt_distri_status (*td_free_fn)(void *object);

/* A new handle for `object` (NULL when out of memory). */
void *td_handle_new(td_kind kind, void *object, td_free_fn free_fn);
/* The object of a live handle of `kind` (NULL otherwise), kept alive until td_handle_release. */
void *td_handle_acquire(const void *handle, td_kind kind);
void td_handle_release(const void *handle);
/* Invalidate a live handle; its object is freed now (status of free_fn) or when the last acquirer releases it.
   Returns 0 when the handle is not live. */
int td_handle_destroy(const void *handle, td_kind kind, trt_distri_status *freed);

/* ---- results (api.c) ---------------------------------------------------------------------------------------- */
typedef struct td_result {
    float *latents; /* NULL: latents_missing says why */
    int64_t shape[4];
    char *latents_missing;
    uint8_t *image; /* NULL: image_missing says why */
    int width, height;
    char *image_missing;
    double seconds;
} td_result;
trt_distri_status td_result_free(void *result);

/* ---- python.c: the embedded interpreter and trt_distri.capi._bridge -------------------------------------------- */
trt_distri_status td_py_create(const char *workdir, const trt_distri_generator_options *options, void **generator);
trt_distri_status td_py_close(void *generator); /* also drops the reference */
trt_distri_status td_py_info(void *generator, int values[10]); /* trt_distri_generator_info's ints, in order */
trt_distri_status td_py_set_loras(void *generator, const char *const *paths, const float *scales, size_t count);
trt_distri_status td_py_generate(void *generator, const char *prompt, const char *negative_prompt,
                                 const trt_distri_generate_params *params, td_result **out);
trt_distri_status td_py_generate_from_embeddings(void *generator, const trt_distri_embeddings *embeddings,
                                                 const trt_distri_generate_params *params, td_result **out);

/* A field of a caller's struct that starts with struct_size, or `fallback` when the caller's (older) struct
   ends before it, or the struct pointer is NULL. */
#define TD_FIELD(ptr, type, field, fallback)                                                                   \
    (((ptr) != NULL && (ptr)->struct_size >= offsetof(type, field) + sizeof((ptr)->field)) ? (ptr)->field      \
                                                                                            : (fallback))

/* Set a field of a caller's struct when the caller's struct_size covers it. */
#define TD_SET(ptr, type, field, value)                                                                        \
    do {                                                                                                       \
        if ((ptr)->struct_size >= offsetof(type, field) + sizeof((ptr)->field)) (ptr)->field = (value);          \
    } while (0)

#endif
