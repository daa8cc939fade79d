/* CPUID mask: run an x86 process with some ISA extensions hidden, so that onnxruntime (MLAS),
 * XNNPACK (cpuinfo), numpy and every other library that picks kernels by CPUID pick the kernels
 * of a smaller CPU. Loaded with LD_PRELOAD by lenet_edge/isa.py; inactive unless
 * LENET_EDGE_ISA_MASK names a profile.
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID 0, kernel >= 4.12, CPU flag cpuid_fault)
 * makes every CPUID instruction of this thread and of threads it creates later raise SIGSEGV. The
 * handler runs the real CPUID (faulting off for that one instruction), clears the hidden feature
 * bits and resumes after the instruction. The setting survives fork and clone and is reset by
 * execve; the environment carries LD_PRELOAD to child processes, which mask themselves again.
 *
 * Profiles: "avx2" hides AVX-512 (all subsets), AVX-VNNI/-IFMA/-NE-CONVERT/-VNNI-INT8/-INT16,
 * AVX10 and AMX; AVX2, FMA, F16C, BMI stay: an AVX2-only x86 (AMD Zen 2/3, Intel Haswell..Comet
 * Lake) and qemu-x86_64 -cpu max (7.2). "avx512vnni" hides AMX, the VEX-encoded VNNI/IFMA
 * family, AVX512-FP16, VP2INTERSECT, AVX10 and the Xeon Phi subsets: AMD Zen 4's set. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

/* The bits a profile clears. CPUID.(EAX=7,ECX=0): EBX bit 16 AVX512F, 17 DQ, 21 IFMA, 26 PF, 27 ER,
 * 28 CD, 30 BW, 31 VL; ECX 1 VBMI, 6 VBMI2, 11 VNNI, 12 BITALG, 14 VPOPCNTDQ; EDX 2 4VNNIW,
 * 3 4FMAPS, 8 VP2INTERSECT, 22 AMX-BF16, 23 AVX512-FP16, 24 AMX-TILE, 25 AMX-INT8.
 * CPUID.(EAX=7,ECX=1): EAX 4 AVX-VNNI, 5 AVX512-BF16, 21 AMX-FP16, 23 AVX-IFMA; EDX 4 AVX-VNNI-INT8,
 * 5 AVX-NE-CONVERT, 8 AMX-COMPLEX, 10 AVX-VNNI-INT16, 19 AVX10. */
struct profile {
    const char *name;
    uint32_t l7_ebx, l7_ecx, l7_edx, l71_eax, l71_edx;
};
#define AMX_AND_NEWER_EDX (BIT(22) | BIT(24) | BIT(25))
#define VEX_EXTRAS_71_EAX (BIT(4) | BIT(21) | BIT(23))
#define VEX_EXTRAS_71_EDX (BIT(4) | BIT(5) | BIT(8) | BIT(10) | BIT(19))
static const struct profile PROFILES[] = {
    /* an AVX2-only x86 (AMD Zen 2/3, Intel Haswell..Comet Lake), also qemu-x86_64 -cpu max (7.2) */
    {"avx2", BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31),
     BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14), BIT(2) | BIT(3) | BIT(8) | BIT(23) | AMX_AND_NEWER_EDX,
     VEX_EXTRAS_71_EAX | BIT(5), VEX_EXTRAS_71_EDX},
    /* AVX-512 with VNNI and BF16, no AMX, no VEX VNNI, no FP16: AMD Zen 4's set */
    {"avx512vnni", BIT(26) | BIT(27), 0, BIT(2) | BIT(3) | BIT(8) | BIT(23) | AMX_AND_NEWER_EDX,
     VEX_EXTRAS_71_EAX, VEX_EXTRAS_71_EDX},
};

static volatile long intercepted;
static const struct profile *active;

/* For the process to report on itself (runtime/env.py reads these through ctypes). */
const char *lenet_edge_isa_mask_profile(void) { return active ? active->name : "none"; }
long lenet_edge_isa_mask_intercepted(void) { return intercepted; }

static long cpuid_enabled(int on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    ucontext_t *uc = (ucontext_t *)ctx;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    /* a CPUID fault is a general protection fault (SI_KERNEL) at a readable 0F A2; anything else
     * is a real crash: restore the default action and let the instruction fault again */
    if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    cpuid_enabled(1);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    cpuid_enabled(0);
    if (leaf == 7 && sub == 0) {
        b &= ~active->l7_ebx;
        c &= ~active->l7_ecx;
        d &= ~active->l7_edx;
    } else if (leaf == 7 && sub == 1) {
        a &= ~active->l71_eax;
        d &= ~active->l71_edx;
    }
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
    intercepted++;
}

__attribute__((constructor)) static void install(void) {
    const char *p = getenv("LENET_EDGE_ISA_MASK");
    const struct profile *want = 0;
    for (size_t i = 0; p && i < sizeof PROFILES / sizeof PROFILES[0]; i++)
        if (strcmp(p, PROFILES[i].name) == 0) want = &PROFILES[i];
    if (!want) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, 0) != 0) return;
    if (cpuid_enabled(0) != 0) { /* no CPUID faulting here: stay inactive (the caller checks) */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    active = want;
}
