FROM --platform=$BUILDPLATFORM node:20 AS web
WORKDIR /web
COPY web/ .
RUN npm ci && npm run build
FROM node:20-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev
COPY --from=web /web/dist public
COPY server.js .
CMD ["node", "server.js"]
