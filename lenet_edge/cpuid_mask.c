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
 * Profile "avx2": AVX-512 (all subsets), AVX-VNNI/-IFMA/-NE-CONVERT/-VNNI-INT8/-INT16, AVX10 and
 * AMX hidden; AVX2, FMA, F16C, BMI stay: the feature set of an AVX2-only x86 (AMD Zen 2/3, Intel
 * Haswell..Comet Lake) and of qemu-x86_64 -cpu max (7.2). */
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
/* CPUID.(EAX=7,ECX=0): EBX AVX512 F DQ IFMA PF ER CD BW VL; ECX AVX512 VBMI VBMI2 VNNI BITALG
 * VPOPCNTDQ; EDX AVX512 4VNNIW 4FMAPS VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
static const uint32_t L7_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
static const uint32_t L7_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const uint32_t L7_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
/* CPUID.(EAX=7,ECX=1): EAX AVX-VNNI, AVX512-BF16, AVX-IFMA; EDX AVX-VNNI-INT8, AVX-NE-CONVERT,
 * AVX-VNNI-INT16, AVX10 */
static const uint32_t L71_EAX = BIT(4) | BIT(5) | BIT(23);
static const uint32_t L71_EDX = BIT(4) | BIT(5) | BIT(10) | BIT(19);

static volatile long intercepted;
static int active;

/* For the process to report on itself (runtime/env.py reads these through ctypes). */
const char *lenet_edge_isa_mask_profile(void) { return active ? "avx2" : "none"; }
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
        b &= ~L7_EBX;
        c &= ~L7_ECX;
        d &= ~L7_EDX;
    } else if (leaf == 7 && sub == 1) {
        a &= ~L71_EAX;
        d &= ~L71_EDX;
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
    if (!p || strcmp(p, "avx2") != 0) return;
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
    active = 1;
}
