# syntax=docker/dockerfile:1
# escape=`
FROM python:3.12-slim
RUN pip install `
      requests
CMD ["python"]
