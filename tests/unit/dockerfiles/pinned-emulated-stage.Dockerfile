# A stage pinned to a third platform (a generator that only ships riscv64 binaries)
FROM --platform=linux/riscv64 example/riscv-gen:1 AS gen
RUN gen --out /gen.bin
FROM scratch
COPY --from=gen /gen.bin /gen.bin
