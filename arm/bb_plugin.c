/*
 * bb_plugin.c - QEMU TCG plugin (plugin API v1, QEMU 7.2): per-basic-block execution counts inside
 * marked regions, with each block's machine code, for a cycle model (arm/mca.py + llvm-mca).
 *
 * Same marker protocol as insn_plugin.c: the guest calls syscall(0x4c454e, 1, tag) to start a
 * region and syscall(0x4c454e, 2, tag) to stop it. Regions with tag 0 are "empty" (only the
 * marker path runs: its cost per region is subtracted); every other tag is a "work" region.
 *
 * A translated block (TB) is one straight-line run of guest instructions; the plugin keeps, per
 * translation, its guest address, instruction count, raw instruction bytes and two execution
 * counters (inside work regions, inside empty regions). The same code translated twice gives two
 * entries with equal address and bytes; the reader adds them up.
 *
 * Counting is exact for one guest thread running inside a region (onnxruntime with one intra- and
 * one inter-op thread); the counters are relaxed atomics, so concurrent threads lose nothing
 * either, only the split between regions is then approximate.
 *
 * PLUGIN ARGUMENTS  (-plugin ./libbb.so,arg=value,...)
 *   out=FILE   the report (default: stderr)
 *   mark_nr=N  marker syscall number (default 0x4c454e)
 *
 * REPORT
 *   regions work=<k> empty=<m> work_insns=<n> empty_insns=<n>
 *   bb vaddr=0x<hex> insns=<n> work=<count> empty=<count> bytes=<hex>     (only executed blocks)
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

typedef struct {
    uint64_t vaddr;
    uint32_t n_insns;
    uint32_t n_bytes;
    uint64_t work;
    uint64_t empty;
    uint8_t *bytes;
} block_t;

static int64_t mark_nr = 0x4c454e;
static char *out_path;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static block_t **blocks;
static size_t n_blocks, cap_blocks;
/* 0 = no region open, 1 = work region, 2 = empty region; read on every block execution */
static int state;
static uint64_t n_work, n_empty, work_insns, empty_insns;

static void exec_cb(unsigned int vcpu_index, void *udata)
{
    block_t *b = udata;
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (s == 1) {
        __atomic_fetch_add(&b->work, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&work_insns, b->n_insns, __ATOMIC_RELAXED);
    } else if (s == 2) {
        __atomic_fetch_add(&b->empty, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&empty_insns, b->n_insns, __ATOMIC_RELAXED);
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
    }
    block_t *b = calloc(1, sizeof(block_t));
    b->bytes = malloc(total ? total : 1);
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = (uint32_t)n;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t sz = qemu_plugin_insn_size(insn);
        memcpy(b->bytes + at, qemu_plugin_insn_data(insn), sz);
        at += sz;
    }
    b->n_bytes = (uint32_t)at;
    pthread_mutex_lock(&lock);
    if (n_blocks == cap_blocks) {
        cap_blocks = cap_blocks ? 2 * cap_blocks : 4096;
        blocks = realloc(blocks, cap_blocks * sizeof(block_t *));
    }
    blocks[n_blocks++] = b;
    pthread_mutex_unlock(&lock);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, exec_cb, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void vcpu_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                         uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                         uint64_t a7, uint64_t a8)
{
    if (num != mark_nr) {
        return;
    }
    if (a1 == 1) {
        if (a2 == 0) {
            n_empty++;
        } else {
            n_work++;
        }
        __atomic_store_n(&state, a2 == 0 ? 2 : 1, __ATOMIC_RELAXED);
    } else if (a1 == 2) {
        __atomic_store_n(&state, 0, __ATOMIC_RELAXED);
    }
}

static void plugin_exit(qemu_plugin_id_t id, void *p)
{
    FILE *f = out_path ? fopen(out_path, "w") : NULL;
    FILE *o = f ? f : stderr;
    pthread_mutex_lock(&lock);
    fprintf(o, "regions work=%" PRIu64 " empty=%" PRIu64 " work_insns=%" PRIu64
            " empty_insns=%" PRIu64 "\n", n_work, n_empty, work_insns, empty_insns);
    for (size_t i = 0; i < n_blocks; i++) {
        block_t *b = blocks[i];
        if (!b->work && !b->empty) {
            continue;
        }
        fprintf(o, "bb vaddr=0x%" PRIx64 " insns=%u work=%" PRIu64 " empty=%" PRIu64 " bytes=",
                b->vaddr, b->n_insns, b->work, b->empty);
        for (uint32_t k = 0; k < b->n_bytes; k++) {
            fprintf(o, "%02x", b->bytes[k]);
        }
        fputc('\n', o);
    }
    pthread_mutex_unlock(&lock);
    if (f) {
        fclose(f);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv)
{
    for (int i = 0; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "bb_plugin: bad option %s (want key=value)\n", argv[i]);
            return -1;
        }
        *eq = 0;
        if (!strcmp(argv[i], "out")) {
            out_path = strdup(eq + 1);
        } else if (!strcmp(argv[i], "mark_nr")) {
            mark_nr = strtoll(eq + 1, NULL, 0);
        } else {
            fprintf(stderr, "bb_plugin: unknown option %s\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, vcpu_syscall);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
