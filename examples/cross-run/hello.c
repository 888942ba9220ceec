/* A real C program for archfleet's cross-compilation examples.
 *
 * It prints the machine it runs on and a checksum from HEAVY generated functions. The
 * functions exist to make compiling expensive (the optimiser has real work in each one), so
 * that where the compiler runs (natively or under QEMU) decides how long the build takes.
 * Build with -DHEAVY=1 .. 4 (thousands of functions); default 1.
 */
#include <stdio.h>
#include <sys/utsname.h>

#ifndef HEAVY
#define HEAVY 1
#endif

#define BODY(n)                                                                 \
    __attribute__((noinline)) static unsigned f##n(unsigned x) {                \
        unsigned s = n##u;                                                      \
        for (unsigned i = 0; i < x; i++) {                                      \
            s = s * 2654435761u + (i ^ n##u);                                   \
            if ((s >> 7) % 13u == n##u % 13u) s ^= s << 3;                      \
            switch (i & 7u) {                                                   \
            case 0: s += 1; break;                                              \
            case 1: s -= 3u * i; break;                                         \
            case 2: s ^= 5u + (s >> 9); break;                                  \
            case 3: s += s >> 2; break;                                         \
            case 4: s = (s << 5) | (s >> 27); break;                            \
            default: s -= i * n##u;                                             \
            }                                                                   \
        }                                                                       \
        return s;                                                               \
    }
#define REF(n) f##n,
#define D(m, a) m(a##0) m(a##1) m(a##2) m(a##3) m(a##4) m(a##5) m(a##6) m(a##7) m(a##8) m(a##9)
#define C(m, a) D(m, a##0) D(m, a##1) D(m, a##2) D(m, a##3) D(m, a##4) \
                D(m, a##5) D(m, a##6) D(m, a##7) D(m, a##8) D(m, a##9)
#define B(m, a) C(m, a##0) C(m, a##1) C(m, a##2) C(m, a##3) C(m, a##4) \
                C(m, a##5) C(m, a##6) C(m, a##7) C(m, a##8) C(m, a##9)

B(BODY, 1)
#if HEAVY >= 2
B(BODY, 2)
#endif
#if HEAVY >= 3
B(BODY, 3)
#endif
#if HEAVY >= 4
B(BODY, 4)
#endif

static unsigned (*const table[])(unsigned) = {
    B(REF, 1)
#if HEAVY >= 2
    B(REF, 2)
#endif
#if HEAVY >= 3
    B(REF, 3)
#endif
#if HEAVY >= 4
    B(REF, 4)
#endif
};

int main(void) {
    struct utsname u;
    unsigned acc = 1;
    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)
        acc += table[i](acc % 64u + 1u);
    uname(&u);
    printf("%s %u\n", u.machine, acc);
    return 0;
}
