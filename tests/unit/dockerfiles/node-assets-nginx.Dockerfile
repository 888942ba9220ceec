# A front end built once, on the build machine, served by nginx for every platform
FROM --platform=$BUILDPLATFORM node:20-alpine AS web
WORKDIR /web
COPY package.json package-lock.json ./
RUN npm ci
COPY . .
RUN npm run build
FROM nginx:1.27-alpine
COPY --from=web /web/dist /usr/share/nginx/html
