"""placeholder during bring-up"""
from casehub.api.base import Blueprint
blp = Blueprint("referrals", __name__, url_prefix="/v1/referrals")
