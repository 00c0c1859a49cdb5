// filters/rules/expr.cc — see expr.h.
#include "filters/rules/expr.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace moat::filters::rules {
namespace {

constexpr int kMaxDepth = 200;

struct Token {
  enum Kind { End, Num, Name, Op } kind = End;
  std::string text;
  double num = 0;
};

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) { advance(); }

  std::unique_ptr<Expr> parseAll(std::string& error) {
    auto e = binary(0);
    if (e && tok_.kind != Token::End) fail("unexpected '" + tok_.text + "'");
    if (!error_.empty()) {
      error = error_;
      return nullptr;
    }
    return e;
  }

 private:
  void advance() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    tok_ = Token{};
    if (pos_ >= s_.size()) return;
    char c = s_[pos_];
    if (std::isdigit(static_cast<unsigned char>(c)) || (c == '.' && pos_ + 1 < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_ + 1])))) {
      size_t start = pos_;
      while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' || s_[pos_] == '_')) ++pos_;
      tok_.kind = Token::Num;
      tok_.text = std::string(s_.substr(start, pos_ - start));
      std::string digits = tok_.text;
      digits.erase(std::remove(digits.begin(), digits.end(), '_'), digits.end());
      tok_.num = std::strtod(digits.c_str(), nullptr);
      return;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t start = pos_;
      while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_')) ++pos_;
      tok_.kind = Token::Name;
      tok_.text = std::string(s_.substr(start, pos_ - start));
      return;
    }
    static const char* kTwo[] = {"&&", "||", "<=", ">=", "==", "!="};
    for (const char* t : kTwo) {
      if (s_.compare(pos_, 2, t) == 0) {
        tok_ = {Token::Op, t, 0};
        pos_ += 2;
        return;
      }
    }
    tok_ = {Token::Op, std::string(1, c), 0};
    ++pos_;
  }

  static int precedence(const std::string& op) {
    if (op == "||") return 1;
    if (op == "&&") return 2;
    if (op == "==" || op == "!=") return 3;
    if (op == "<" || op == "<=" || op == ">" || op == ">=") return 4;
    if (op == "+" || op == "-") return 5;
    if (op == "*" || op == "/") return 6;
    return -1;
  }

  static Expr::Op opOf(const std::string& op) {
    if (op == "||") return Expr::Op::Or;
    if (op == "&&") return Expr::Op::And;
    if (op == "==") return Expr::Op::Eq;
    if (op == "!=") return Expr::Op::Ne;
    if (op == "<") return Expr::Op::Lt;
    if (op == "<=") return Expr::Op::Le;
    if (op == ">") return Expr::Op::Gt;
    if (op == ">=") return Expr::Op::Ge;
    if (op == "+") return Expr::Op::Add;
    if (op == "-") return Expr::Op::Sub;
    if (op == "*") return Expr::Op::Mul;
    return Expr::Op::Div;
  }

  // Precedence climbing; all binary operators are left-associative.
  std::unique_ptr<Expr> binary(int minPrec) {
    auto left = unary();
    while (left && tok_.kind == Token::Op && precedence(tok_.text) > minPrec) {
      std::string op = tok_.text;
      advance();
      auto right = binary(precedence(op));
      if (!right) return nullptr;
      auto e = std::make_unique<Expr>();
      e->op = opOf(op);
      e->a = std::move(left);
      e->b = std::move(right);
      left = std::move(e);
    }
    return left;
  }

  std::unique_ptr<Expr> unary() {
    if (++depth_ > kMaxDepth) return fail("expression nested too deeply");
    struct Guard {
      int& d;
      ~Guard() { --d; }
    } guard{depth_};
    if (tok_.kind == Token::Op && (tok_.text == "!" || tok_.text == "-" || tok_.text == "+")) {
      std::string op = tok_.text;
      advance();
      auto inner = unary();
      if (!inner || op == "+") return inner;
      auto e = std::make_unique<Expr>();
      e->op = op == "!" ? Expr::Op::Not : Expr::Op::Neg;
      e->a = std::move(inner);
      return e;
    }
    if (tok_.kind == Token::Op && tok_.text == "(") {
      advance();
      auto inner = binary(0);
      if (!inner) return nullptr;
      if (tok_.kind != Token::Op || tok_.text != ")") return fail("missing ')'");
      advance();
      return inner;
    }
    auto e = std::make_unique<Expr>();
    if (tok_.kind == Token::Num) {
      e->num = tok_.num;
    } else if (tok_.kind == Token::Name) {
      e->op = Expr::Op::Name;
      e->name = tok_.text;
    } else {
      return fail(tok_.kind == Token::End ? "unexpected end of expression" : "unexpected '" + tok_.text + "'");
    }
    advance();
    return e;
  }

  std::unique_ptr<Expr> fail(std::string msg) {
    if (error_.empty()) error_ = std::move(msg);
    return nullptr;
  }

  std::string_view s_;
  size_t pos_ = 0;
  Token tok_;
  int depth_ = 0;
  std::string error_;
};

}  // namespace

std::unique_ptr<Expr> Expr::parse(std::string_view text, std::string& error) {
  return Parser(text).parseAll(error);
}

double Expr::eval(const std::function<double(const std::string&)>& resolve) const {
  switch (op) {
    case Op::Num: return num;
    case Op::Name: return resolve(name);
    case Op::Not: return a->eval(resolve) == 0 ? 1 : 0;
    case Op::Neg: return -a->eval(resolve);
    case Op::And: return a->eval(resolve) != 0 && b->eval(resolve) != 0 ? 1 : 0;
    case Op::Or: return a->eval(resolve) != 0 || b->eval(resolve) != 0 ? 1 : 0;
    default: break;
  }
  double x = a->eval(resolve), y = b->eval(resolve);
  switch (op) {
    case Op::Mul: return x * y;
    case Op::Div: return y == 0 ? 0 : x / y;
    case Op::Add: return x + y;
    case Op::Sub: return x - y;
    case Op::Lt: return x < y;
    case Op::Le: return x <= y;
    case Op::Gt: return x > y;
    case Op::Ge: return x >= y;
    case Op::Eq: return x == y;
    case Op::Ne: return x != y;
    default: return 0;
  }
}

void Expr::names(std::vector<std::string>& out) const {
  if (op == Op::Name && std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  if (a) a->names(out);
  if (b) b->names(out);
}

}  // namespace moat::filters::rules
