// filters/rules/expr.h — the arithmetic/boolean expressions of SpamAssassin `meta` rules
// and of `if` conditions: numbers, names, ! unary -, * /, + -, < <= > >=, == !=, &&, ||,
// parentheses, with Perl's precedence. A name evaluates through a caller's resolver (a
// rule's hit count for meta). Untrusted input: rule files; parsing is recursive descent
// with a depth bound. Logs nothing.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moat::filters::rules {

class Expr {
 public:
  enum class Op { Num, Name, Not, Neg, Mul, Div, Add, Sub, Lt, Le, Gt, Ge, Eq, Ne, And, Or };
  // Parses `text`; on a syntax error returns nullptr with `error` set.
  static std::unique_ptr<Expr> parse(std::string_view text, std::string& error);
  double eval(const std::function<double(const std::string&)>& resolve) const;
  // The names used, each once.
  void names(std::vector<std::string>& out) const;

  Op op = Op::Num;
  double num = 0;
  std::string name;
  std::unique_ptr<Expr> a, b;
};

}  // namespace moat::filters::rules
