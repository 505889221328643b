/* The thread-local last error: a fixed buffer per thread, so that reporting an error never allocates. */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static _Thread_local char last_error[4096];

trt_distri_status td_fail(trt_distri_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof(last_error), format, args);
    va_end(args);
    return status;
}

trt_distri_status td_ok(void) {
    last_error[0] = '\0';
    return TRT_DISTRI_OK;
}

const char *trt_distri_last_error(void) { return last_error; }

const char *trt_distri_status_name(trt_distri_status status) {
    static const char *const names[] = {
        "TRT_DISTRI_OK", "TRT_DISTRI_ERROR_INVALID_ARGUMENT", "TRT_DISTRI_ERROR_INVALID_HANDLE",
        "TRT_DISTRI_ERROR_WORK_DIRECTORY", "TRT_DISTRI_ERROR_CONFIG", "TRT_DISTRI_ERROR_UNAVAILABLE",
        "TRT_DISTRI_ERROR_MISSING_PACKAGE", "TRT_DISTRI_ERROR_RUNTIME", "TRT_DISTRI_ERROR_PYTHON",
        "TRT_DISTRI_ERROR_OUT_OF_MEMORY", "TRT_DISTRI_ERROR_INTERNAL"};
    if ((int)status < 0 || (size_t)status >= sizeof(names) / sizeof(names[0])) return "TRT_DISTRI_ERROR_UNKNOWN";
    return names[status];
}
