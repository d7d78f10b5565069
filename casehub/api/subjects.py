"""placeholder during bring-up"""
from casehub.api.base import Blueprint
blp = Blueprint("subjects", __name__, url_prefix="/v1/subjects")
