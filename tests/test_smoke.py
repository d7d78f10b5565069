def test_health(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.headers["X-Request-Id"]


def test_token_and_agencies(factory, client):
    btp = factory.partner("btp")
    r = client.get("/v1/agencies", headers=btp.headers())
    assert r.status_code == 200, r.get_json()
    assert [a["code"] for a in r.get_json()["items"]] == ["btp"]
