#!/bin/sh
# Stand-in for Prisma's Rust schema engine, which the Prisma CLI downloads from binaries.prisma.sh
# (not the npm registry) before any command, even `prisma generate`, which does not run it:
# PRISMA_SCHEMA_ENGINE_BINARY naming an existing file skips that download. Should anything run
# it, say so and fail.
echo "no-schema-engine.sh: Prisma's schema engine is not installed (see examples/prisma-smoke)" >&2
exit 1
