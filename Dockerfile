FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_DEBUG=1 python manage.py collectstatic --noinput -v 0
RUN useradd --create-home app
USER app
EXPOSE 8000
CMD ["gunicorn", "batchplatform.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
