# node-gyp compiles native modules for the CPU npm runs on: the target's
FROM node:20-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
FROM node:20-bookworm-slim
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
COPY . .
CMD ["node", "server.js"]
