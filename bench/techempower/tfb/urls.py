from django.urls import path

from tfb import views

urlpatterns = [
    path("plaintext", views.plaintext),
    path("json", views.json),
    path("db", views.db),
    path("queries", views.queries),
    path("fortunes", views.fortunes),
    path("updates", views.updates),
]
