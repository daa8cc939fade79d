/*
 * insn_plugin.c - QEMU TCG plugin (plugin API v1, QEMU 7.2) that counts
 * executed guest instructions only inside regions delimited by markers that
 * the guest itself emits.
 *
 * MARKER PROTOCOL (guest side)
 *   The guest makes a system call with a magic, otherwise unused syscall
 *   number (default 0x4c454e = 4998478, "LEN"), first argument = command:
 *       syscall(0x4c454e, 1, tag)   start a region (tag: any integer label)
 *       syscall(0x4c454e, 2, tag)   stop the open region
 *   qemu-user reports every syscall to the plugin *before* executing it; the
 *   unknown number then just fails with ENOSYS, so the same guest code is
 *   harmless on a real ARM board without the plugin. From Python:
 *       libc = ctypes.CDLL(None); f = libc.syscall
 *       f.argtypes = [ctypes.c_long]*3; f.restype = ctypes.c_long
 *       f(0x4c454e, 1, 0) ... f(0x4c454e, 2, 0)
 *   Regions do not nest; a second start while one is open restarts it.
 *
 * COUNTING MODES (plugin argument mode=)
 *   inline (default): one inline "add n_insns" op per translated block into a
 *       single global counter (qemu_plugin_register_vcpu_tb_exec_inline - the
 *       per-vCPU inline API only exists from QEMU 9). Fastest. The add is not
 *       atomic, so if two guest threads run *concurrently* some increments can
 *       be lost; with onnxruntime intra/inter_op_num_threads=1 and
 *       OPENBLAS_NUM_THREADS=1 only one guest thread runs during a region.
 *   tb: a callback per executed block adds n_insns to a per-vCPU (= per guest
 *       thread in qemu-user) counter slot. Exact for multi-threaded guests,
 *       and reports the marker thread separately from all threads. ~2-3x slower.
 *
 *   A region's count = instructions executed (all threads) after the start
 *   marker's `svc` up to and including the stop marker's `svc` (the block
 *   holding the stop svc is counted at block entry, the block holding the start
 *   svc is not). The marker call path itself (ctypes -> libc syscall()) is
 *   inside the region; measure it with an empty region and subtract.
 *
 * PLUGIN ARGUMENTS  (-plugin ./libinsn.so,arg=value,...)
 *   out=FILE      write the report to FILE (default: qemu log = stderr)
 *   mode=inline|tb
 *   mark_nr=N     marker syscall number (decimal or 0x..), default 0x4c454e
 *   verbose=on    also print one line per marker as it happens
 *
 * REPORT (at guest exit), one line per finished region, then a total:
 *   region <i> tag=<t> insns=<n> [thread_insns=<n>] vcpu=<v> mode=<m>
 *   total insns=<n> regions=<k> mode=<m>
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#include "qemu-plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_VCPUS 1024      /* qemu-user: one vCPU index per live guest thread */
#define MAX_REGIONS 4096

typedef struct {
    uint64_t n;
    char pad[56];           /* one cache line per vCPU: no false sharing */
} vcpu_count_t;

typedef struct {
    uint64_t tag;
    uint64_t insns;         /* all threads */
    uint64_t thread_insns;  /* marker thread only (mode=tb) */
    unsigned vcpu;
} region_t;

static enum { MODE_INLINE, MODE_TB } mode = MODE_INLINE;
static int64_t mark_nr = 0x4c454e;
static bool verbose;
static char *out_path;

static uint64_t inline_count;                 /* mode=inline */
static vcpu_count_t vcpu_counts[MAX_VCPUS];   /* mode=tb */
static uint64_t overflow_count;               /* mode=tb, vcpu >= MAX_VCPUS */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static bool open_region;
static uint64_t open_tag, open_total, open_thread;
static unsigned open_vcpu;
static region_t regions[MAX_REGIONS];
static size_t n_regions, dropped_regions;

static uint64_t total_now(void)
{
    if (mode == MODE_INLINE) {
        return __atomic_load_n(&inline_count, __ATOMIC_RELAXED);
    }
    uint64_t s = __atomic_load_n(&overflow_count, __ATOMIC_RELAXED);
    for (int i = 0; i < MAX_VCPUS; i++) {
        s += __atomic_load_n(&vcpu_counts[i].n, __ATOMIC_RELAXED);
    }
    return s;
}

static uint64_t thread_now(unsigned vcpu)
{
    if (mode != MODE_TB || vcpu >= MAX_VCPUS) {
        return 0;
    }
    return __atomic_load_n(&vcpu_counts[vcpu].n, __ATOMIC_RELAXED);
}

static void vcpu_tb_exec(unsigned int vcpu_index, void *udata)
{
    uint64_t n = (uint64_t)(uintptr_t)udata;
    if (vcpu_index < MAX_VCPUS) {
        /* only this thread writes this slot; relaxed store keeps reads sane */
        __atomic_store_n(&vcpu_counts[vcpu_index].n,
                         vcpu_counts[vcpu_index].n + n, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&overflow_count, n, __ATOMIC_RELAXED);
    }
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (mode == MODE_INLINE) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                 &inline_count, n);
    } else {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, vcpu_tb_exec,
                                             QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)n);
    }
}

static void emit(FILE *f, const char *s)
{
    if (f) {
        fputs(s, f);
    } else {
        qemu_plugin_outs(s);
    }
}

static void vcpu_syscall(qemu_plugin_id_t id, unsigned int vcpu_index,
                         int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                         uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7,
                         uint64_t a8)
{
    if (num != mark_nr || (a1 != 1 && a1 != 2)) {
        return;
    }
    uint64_t tot = total_now();
    uint64_t thr = thread_now(vcpu_index);
    char buf[256];
    buf[0] = 0;

    pthread_mutex_lock(&lock);
    if (a1 == 1) {
        open_region = true;
        open_tag = a2;
        open_total = tot;
        open_thread = thr;
        open_vcpu = vcpu_index;
        if (verbose) {
            snprintf(buf, sizeof(buf), "insn_plugin: start tag=%" PRIu64 " vcpu=%u\n",
                     a2, vcpu_index);
        }
    } else if (open_region) {
        open_region = false;
        region_t r = {
            .tag = open_tag,
            .insns = tot - open_total,
            .thread_insns = (vcpu_index == open_vcpu) ? thr - open_thread : 0,
            .vcpu = vcpu_index,
        };
        if (n_regions < MAX_REGIONS) {
            regions[n_regions++] = r;
        } else {
            dropped_regions++;
        }
        if (verbose) {
            snprintf(buf, sizeof(buf), "insn_plugin: stop tag=%" PRIu64 " insns=%" PRIu64 "\n",
                     r.tag, r.insns);
        }
    } else if (verbose) {
        snprintf(buf, sizeof(buf), "insn_plugin: stop without start (ignored)\n");
    }
    pthread_mutex_unlock(&lock);
    if (buf[0]) {
        qemu_plugin_outs(buf);
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    FILE *f = NULL;
    char buf[256];
    const char *m = mode == MODE_INLINE ? "inline" : "tb";

    if (out_path) {
        f = fopen(out_path, "w");
        if (!f) {
            snprintf(buf, sizeof(buf), "insn_plugin: cannot open %s, using stderr\n", out_path);
            qemu_plugin_outs(buf);
        }
    }
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_regions; i++) {
        region_t *r = &regions[i];
        if (mode == MODE_TB) {
            snprintf(buf, sizeof(buf),
                     "region %zu tag=%" PRIu64 " insns=%" PRIu64 " thread_insns=%" PRIu64
                     " vcpu=%u mode=%s\n", i, r->tag, r->insns, r->thread_insns, r->vcpu, m);
        } else {
            snprintf(buf, sizeof(buf), "region %zu tag=%" PRIu64 " insns=%" PRIu64
                     " vcpu=%u mode=%s\n", i, r->tag, r->insns, r->vcpu, m);
        }
        emit(f, buf);
    }
    if (open_region) {
        emit(f, "warning: a region was still open at exit (no stop marker)\n");
    }
    if (dropped_regions) {
        snprintf(buf, sizeof(buf), "warning: %zu regions dropped (MAX_REGIONS)\n", dropped_regions);
        emit(f, buf);
    }
    snprintf(buf, sizeof(buf), "total insns=%" PRIu64 " regions=%zu mode=%s\n",
             total_now(), n_regions, m);
    emit(f, buf);
    pthread_mutex_unlock(&lock);
    if (f) {
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id,
                                           const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        char *opt = argv[i];
        char *eq = strchr(opt, '=');
        if (!eq) {
            fprintf(stderr, "insn_plugin: bad option %s (want key=value)\n", opt);
            return -1;
        }
        *eq = 0;
        const char *k = opt, *v = eq + 1;
        if (!strcmp(k, "out")) {
            out_path = strdup(v);
        } else if (!strcmp(k, "mode")) {
            if (!strcmp(v, "inline")) {
                mode = MODE_INLINE;
            } else if (!strcmp(v, "tb")) {
                mode = MODE_TB;
            } else {
                fprintf(stderr, "insn_plugin: mode must be inline or tb\n");
                return -1;
            }
        } else if (!strcmp(k, "mark_nr")) {
            mark_nr = strtoll(v, NULL, 0);
        } else if (!strcmp(k, "verbose")) {
            if (!qemu_plugin_bool_parse(k, v, &verbose)) {
                fprintf(stderr, "insn_plugin: bad boolean %s\n", v);
                return -1;
            }
        } else {
            fprintf(stderr, "insn_plugin: unknown option %s\n", k);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, vcpu_syscall);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
