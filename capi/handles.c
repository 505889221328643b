/* Handles are ids, not pointers: the registry maps a live id to its object. Ids are never reused, so calling with
   a destroyed handle is an error (INVALID_HANDLE), not a use-after-free. An object in use by a call (acquired) is
   freed by the last release after destroy, so destroy may race with a call on another thread. */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

typedef struct {
    uintptr_t id;
    td_kind kind;
    void *object;
    td_free_fn free_fn;
    int users;
    int destroyed;
} slot;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static slot *slots;
static size_t count, capacity;
static uintptr_t next_id = 0x7d150000; /* steps of 16, like aligned pointers; never 0 */

static slot *find(uintptr_t id) {
    for (size_t i = 0; i < count; i++)
        if (slots[i].id == id) return &slots[i];
    return NULL;
}

static void remove_slot(slot *s) { *s = slots[--count]; }

void *td_handle_new(td_kind kind, void *object, td_free_fn free_fn) {
    pthread_mutex_lock(&lock);
    if (count == capacity) {
        size_t grown = capacity ? 2 * capacity : 16;
        slot *bigger = realloc(slots, grown * sizeof(slot));
        if (bigger == NULL) {
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        slots = bigger, capacity = grown;
    }
    uintptr_t id = next_id;
    next_id += 16;
    slots[count++] = (slot){id, kind, object, free_fn, 0, 0};
    pthread_mutex_unlock(&lock);
    return (void *)id;
}

void *td_handle_acquire(const void *handle, td_kind kind) {
    pthread_mutex_lock(&lock);
    slot *s = find((uintptr_t)handle);
    void *object = NULL;
    if (s != NULL && s->kind == kind && !s->destroyed) {
        s->users++;
        object = s->object;
    }
    pthread_mutex_unlock(&lock);
    return object;
}

void td_handle_release(const void *handle) {
    pthread_mutex_lock(&lock);
    slot *s = find((uintptr_t)handle);
    void *object = NULL;
    td_free_fn free_fn = NULL;
    if (s != NULL && --s->users == 0 && s->destroyed) {
        object = s->object, free_fn = s->free_fn;
        remove_slot(s);
    }
    pthread_mutex_unlock(&lock);
    if (object != NULL) free_fn(object); /* destroyed meanwhile: nobody is left to tell about a failure */
}

int td_handle_destroy(const void *handle, td_kind kind, trt_distri_status *freed) {
    pthread_mutex_lock(&lock);
    slot *s = find((uintptr_t)handle);
    if (s == NULL || s->kind != kind || s->destroyed) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    void *object = NULL;
    td_free_fn free_fn = s->free_fn;
    s->destroyed = 1;
    if (s->users == 0) {
        object = s->object;
        remove_slot(s);
    }
    pthread_mutex_unlock(&lock);
    *freed = object != NULL ? free_fn(object) : TRT_DISTRI_OK;
    return 1;
}
