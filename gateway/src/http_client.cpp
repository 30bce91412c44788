// The gateway's outgoing HTTP client (Boost.Beast; kept out of headers for compile time). Every
// request runs as a coroutine on its own io_context so the stream's deadline covers connect,
// TLS handshake, write and read alike.
#include "yilian/gateway/http_client.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/url/parse.hpp>
#include <exception>
#include <optional>

namespace yilian::gateway {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

struct target {
  bool tls = false;
  std::string host;
  std::string port;
  std::string path;  // origin-form, with the query
};

target parse_target(const std::string& url) {
  auto parsed = boost::urls::parse_absolute_uri(url);
  if (!parsed) throw http_client_error("not an absolute URL: " + url);
  target t;
  std::string scheme(parsed->scheme());
  if (scheme == "https")
    t.tls = true;
  else if (scheme != "http")
    throw http_client_error("unsupported URL scheme '" + scheme + "' in " + url);
  t.host = std::string(parsed->host_address());
  if (t.host.empty()) throw http_client_error("no host in " + url);
  t.port = parsed->has_port() ? std::string(parsed->port()) : (t.tls ? "443" : "80");
  t.path = std::string(parsed->encoded_path());
  if (t.path.empty()) t.path = "/";
  if (parsed->has_query()) t.path += "?" + std::string(parsed->encoded_query());
  return t;
}

http::request<http::string_body> make_request(const http_client_request& r, const target& t) {
  http::request<http::string_body> req;
  req.method_string(r.method);
  req.target(t.path);
  req.version(11);
  bool default_port = t.port == (t.tls ? "443" : "80");
  req.set(http::field::host, default_port ? t.host : t.host + ":" + t.port);
  req.set(http::field::user_agent, "yilian");
  req.set(http::field::connection, "close");
  for (const auto& h : r.headers) req.set(h.name, h.value);
  req.body() = r.body;
  req.prepare_payload();
  return req;
}

http_response to_response(http::response<http::string_body>& res) {
  http_response out;
  out.status = static_cast<int>(res.result_int());
  for (const auto& field : res) out.headers.push_back({std::string(field.name_string()), std::string(field.value())});
  out.body = std::move(res.body());
  return out;
}

asio::awaitable<http_response> exchange_plain(const http_client_request& r, const target& t) {
  auto executor = co_await asio::this_coro::executor;
  tcp::resolver resolver(executor);
  beast::tcp_stream stream(executor);
  stream.expires_after(r.timeout);
  auto endpoints = co_await resolver.async_resolve(t.host, t.port, asio::use_awaitable);
  co_await stream.async_connect(endpoints, asio::use_awaitable);
  auto req = make_request(r, t);
  co_await http::async_write(stream, req, asio::use_awaitable);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  co_await http::async_read(stream, buffer, res, asio::use_awaitable);
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  co_return to_response(res);
}

asio::awaitable<http_response> exchange_tls(const http_client_request& r, const target& t, ssl::context& tls) {
  auto executor = co_await asio::this_coro::executor;
  tcp::resolver resolver(executor);
  beast::ssl_stream<beast::tcp_stream> stream(executor, tls);
  if (!SSL_set_tlsext_host_name(stream.native_handle(), t.host.c_str()))
    throw http_client_error("TLS: cannot set the server name " + t.host);
  stream.set_verify_callback(ssl::host_name_verification(t.host));
  beast::get_lowest_layer(stream).expires_after(r.timeout);
  auto endpoints = co_await resolver.async_resolve(t.host, t.port, asio::use_awaitable);
  co_await beast::get_lowest_layer(stream).async_connect(endpoints, asio::use_awaitable);
  co_await stream.async_handshake(ssl::stream_base::client, asio::use_awaitable);
  auto req = make_request(r, t);
  co_await http::async_write(stream, req, asio::use_awaitable);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  co_await http::async_read(stream, buffer, res, asio::use_awaitable);
  co_return to_response(res);  // no TLS close_notify wait: the connection is dropped
}

}  // namespace

http_response send_http_request(const http_client_request& request) {
  target t = parse_target(request.url);
  asio::io_context io;
  std::optional<ssl::context> tls;
  if (t.tls) {
    tls.emplace(ssl::context::tls_client);
    tls->set_default_verify_paths();
    tls->set_verify_mode(ssl::verify_peer);
  }
  std::optional<http_response> result;
  std::exception_ptr failure;
  auto done = [&](std::exception_ptr e, http_response r) {
    if (e)
      failure = e;
    else
      result = std::move(r);
  };
  if (t.tls)
    asio::co_spawn(io, exchange_tls(request, t, *tls), done);
  else
    asio::co_spawn(io, exchange_plain(request, t), done);
  io.run();
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const http_client_error&) {
      throw;
    } catch (const beast::system_error& e) {
      std::string what = e.code() == beast::error::timeout ? std::string("timed out") : e.code().message();
      throw http_client_error(request.method + " " + request.url + ": " + what);
    } catch (const std::exception& e) {
      throw http_client_error(request.method + " " + request.url + ": " + e.what());
    }
  }
  return std::move(*result);
}

}  // namespace yilian::gateway
