"""/v1/classify, /v1/train and /v1/classifiers."""

from django.urls import URLPattern, re_path

from classifiers.views import ClassifierDetailApi, ClassifierListApi, ClassifyApi, TrainApi

# Optional trailing slashes, as on every /v1 route (a redirect would drop a POST body).
urlpatterns: list[URLPattern] = [
    re_path(r"^v1/classify/?$", ClassifyApi.as_view(), name="classify"),
    re_path(r"^v1/train/?$", TrainApi.as_view(), name="train"),
    re_path(r"^v1/classifiers/?$", ClassifierListApi.as_view(), name="classifiers-list"),
    re_path(
        r"^v1/classifiers/(?P<classifier_id>[^/]+)/?$",
        ClassifierDetailApi.as_view(),
        name="classifiers-detail",
    ),
]
